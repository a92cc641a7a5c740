"""Submitting and scheduling the compiled pipeline on Vertex AI Pipelines and on
Kubeflow Pipelines. Each service sits behind one small adapter whose client can be
injected, so the exact calls are unit-tested; neither service is reachable from the
development machines, so both are untested against the live services."""

from dataclasses import dataclass
from typing import Any


@dataclass
class VertexTarget:
    project: str
    region: str
    pipeline_root: str
    service_account: str | None = None
    enable_caching: bool | None = None   # None: per-task caching options from the spec


class VertexAdapter:
    """`google.cloud.aiplatform.PipelineJob` / `PipelineJobSchedule`."""

    def __init__(self, target: VertexTarget, aiplatform: Any = None):
        if aiplatform is None:
            from google.cloud import aiplatform  # only when submitting to Vertex
        self.ai = aiplatform
        self.target = target

    def _job(self, name: str, package: str, parameters: dict[str, Any]):
        self.ai.init(project=self.target.project, location=self.target.region)
        return self.ai.PipelineJob(
            display_name=name, template_path=package,
            pipeline_root=self.target.pipeline_root, parameter_values=parameters,
            enable_caching=self.target.enable_caching)

    def submit(self, name: str, package: str, parameters: dict[str, Any]) -> str:
        job = self._job(name, package, parameters)
        job.submit(service_account=self.target.service_account)
        return job.resource_name

    def schedule(self, name: str, package: str, parameters: dict[str, Any], cron: str,
                 max_concurrent_runs: int = 1) -> str:
        job = self._job(name, package, parameters)
        schedule = self.ai.PipelineJobSchedule(pipeline_job=job,
                                               display_name=f"{name}-schedule")
        schedule.create(cron=cron, max_concurrent_run_count=max_concurrent_runs,
                        service_account=self.target.service_account)
        return schedule.resource_name


class KfpAdapter:
    """`kfp.Client` on a Kubeflow Pipelines endpoint. `pipeline_root`: where the run's
    artifacts go (the service's default is a minio:// root); `service_account`: the
    Kubernetes service account the run's pods use (None: the service's default)."""

    def __init__(self, host: str, client: Any = None, experiment: str = "imgpipe",
                 namespace: str | None = None, pipeline_root: str | None = None,
                 service_account: str | None = None):
        if client is None:
            import kfp

            client = kfp.Client(host=host, namespace=namespace)
        self.client = client
        self.experiment = experiment
        self.pipeline_root = pipeline_root
        self.service_account = service_account

    def submit(self, name: str, package: str, parameters: dict[str, Any]) -> str:
        result = self.client.create_run_from_pipeline_package(
            package, arguments=parameters, run_name=name, experiment_name=self.experiment,
            pipeline_root=self.pipeline_root, service_account=self.service_account)
        return result.run_id

    def schedule(self, name: str, package: str, parameters: dict[str, Any], cron: str,
                 max_concurrent_runs: int = 1) -> str:
        experiment = self.client.create_experiment(self.experiment)
        job = self.client.create_recurring_run(
            experiment_id=experiment.experiment_id, job_name=f"{name}-schedule",
            cron_expression=_kfp_cron(cron), pipeline_package_path=package, params=parameters,
            max_concurrency=max_concurrent_runs, enabled=True, pipeline_root=self.pipeline_root,
            service_account=self.service_account)
        return job.recurring_run_id


def _kfp_cron(cron: str) -> str:
    """KFP's cron has a seconds field: '0 3 * * *' -> '0 0 3 * * *'."""
    fields = cron.split()
    return cron if len(fields) == 6 else " ".join(["0", *fields])



