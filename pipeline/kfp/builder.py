"""The `@dsl.pipeline` function of a config: the DAG's steps as KFP tasks
(`pipeline/kfp/step_builder.py`), a never-cached resolve task pinning per run what cached
tasks compare with or read from outside the run (the baseline, the previous statistics,
the data source, the schema, referenced registry versions), each step behind the gates
before it under `dsl.If` (`dag.gates_of`: the local runner skips the same steps), and
the report task."""

from __future__ import annotations

import json
from typing import Any, Callable

from pipeline import cache, dag, invoke
from pipeline.config import PipelineConfig
from pipeline.kfp.parameters import (param_type, parameters_for, runtime_parameters,
                                     without_runtime_keys)
from pipeline.kfp.shared import RUNTIME_PARAMETERS
from pipeline.kfp.step_builder import (RESOLVE, component_source, configure, dag_arg, kfp_type,
                                       make_component, make_function, pin_params, vertex_job)


def active_steps(location: str = "", config: PipelineConfig | None = None) -> tuple[dag.Node, ...]:
    """The DAG's steps; with a config, those a run of it has (`dag.active`: an optional
    step it does not configure is no task, no pin, no component)."""
    steps = dag.load(location)
    return steps if config is None else dag.active(steps, config)


def _outside_readers(location: str = "", config: PipelineConfig | None = None
                     ) -> list[dag.Node]:
    return [node for node in active_steps(location, config) if invoke.reads_outside_inputs(node)]


def resolve_parameters(params: dict[str, Any], location: str = "",
                        config: PipelineConfig | None = None) -> list[str]:
    """The run-time parameters the resolve task takes: the baseline alias, and those of
    the sections the steps with outside inputs read."""
    sections = {s for node in _outside_readers(location, config) for s in node.spec.config}
    return [name for name in params
            if name == "baseline_alias" or RUNTIME_PARAMETERS[name].split(".")[0] in sections]


def resolve_configs(config: PipelineConfig, location: str = "") -> str:
    """The resolve task's `configs_json`: the compiled config of each step with outside
    inputs (without the run-time keys, which arrive as parameters)."""
    return json.dumps({node.name: without_runtime_keys(invoke.step_config(node, config))
                       for node in _outside_readers(location, config)}, sort_keys=True)


def pins(location: str = "", config: PipelineConfig | None = None) -> list[str]:
    """Output names of the resolve task: `STEP__PIN` for each pinned input of each step."""
    return [f"{node.name}__{param}" for node in active_steps(location, config)
            for param in pin_params(node)]


def _resolve_source(params: dict[str, Any], location: str = "",
                    config: PipelineConfig | None = None) -> str:
    """The resolve task (never cached): pins what this run compares with and what its
    steps read from outside the run, so that the inputs of each task change exactly
    when its result should: the baseline version (evaluate), the previous statistics
    (validate), and for the steps that read outside inputs (`invoke.reads_outside_inputs`:
    ingest, validate, tune, train) the registry versions their references name and a
    fingerprint of their external files. It takes those steps' configs and run-time
    parameters (it is never cached, so they cost no cache hits)."""
    outputs = ", ".join(f"({name!r}, str)" for name in pins(location, config))
    alias = "p_baseline_alias" if "baseline_alias" in params else "''"
    mine = resolve_parameters(params, location, config)
    scheduled = "data_spans" in params
    signature = ", ".join(["context_json: str", "configs_json: str"]
                          + [f"p_{name}: {param_type(params[name])}" for name in mine]
                          + (["schedule_time: str"] if scheduled else []))
    overrides = ", ".join(f"{RUNTIME_PARAMETERS[n]!r}: p_{n}" for n in mine
                          if n != "baseline_alias")
    return (f"def {RESOLVE}({signature}) -> NamedTuple('Pins', [{outputs}]):\n"
            f"    from pipeline.kfp.entrypoint import resolve_pins\n"
            f"    return resolve_pins(context_json, {alias}, configs_json, {{{overrides}}}"
            f"{dag_arg(location)}{', schedule_time=schedule_time' if scheduled else ''})\n")


def report_inputs() -> tuple[dag.Ref, ...]:
    """The step outputs the report task is given (`pipeline/report/html.py` TASK_INPUTS)."""
    from pipeline.report.html import TASK_INPUTS

    return TASK_INPUTS


def _report_source(params: dict[str, Any], location: str = "") -> str:
    """The report task: the run's artifacts, and the config the model card records
    (`config_json`, with the run-time parameters of its sections applied)."""
    inputs = ", ".join(f"{ref.output}: Input[{kfp_type(ref.type)}]" for ref in report_inputs())
    mapping = ", ".join(f"{str(ref)!r}: {ref.output}" for ref in report_inputs())
    mine = _report_parameters(params, location)
    values = "".join(f"p_{name}: {param_type(params[name])}, " for name in mine)
    overrides = ", ".join(f"{RUNTIME_PARAMETERS[n]!r}: p_{n}" for n in mine)
    return (f"def report(context_json: str, config_json: str, run_id: str, {values}{inputs}, "
            f"report: Output[HTML]):\n"
            f"    from pipeline.kfp.entrypoint import write_report\n"
            f"    write_report(context_json, run_id, {{{mapping}}}, report, config_json, "
            f"{{{overrides}}}{dag_arg(location)})\n")


def _report_parameters(params: dict[str, Any], location: str = "") -> list[str]:
    recorded = {s for node in dag.load(location) for s in node.spec.record}
    return parameters_for(tuple(recorded), params)


def report_config(config: PipelineConfig, location: str = "") -> str:
    """The report task's `config_json`: the recorded sections, without the run-time
    keys (they arrive as parameters)."""
    recorded = invoke.recorded_config(config, dag.load(location))
    return json.dumps(without_runtime_keys({invoke.RECORD: recorded}), sort_keys=True)


def components(config: PipelineConfig, location: str = "") -> dict[str, Any]:
    params = runtime_parameters(config)
    comps = {node.name: make_component(node.name, component_source(node, params, location),
                                        config.kfp.image_for(node.name))
             for node in active_steps(location, config)}
    comps["report"] = make_component("report", _report_source(params, location),
                                      config.kfp.image_for("report"))
    comps[RESOLVE] = make_component(RESOLVE, _resolve_source(params, location, config),
                                     config.kfp.image_for(RESOLVE))
    return comps


def build_pipeline(config: PipelineConfig, location: str = "", scheduled: bool = True,
                   schedule_time: str = "") -> Callable:
    """The `@dsl.pipeline` function for this config: typed parameters (RUNTIME_PARAMETERS,
    defaults from the config), one task per step with only the config it reads, a
    resolve task pinning the baseline and the previous statistics, the push under the
    gates, and the report. `location`: a user's DAG (`dag.load`), '' for the built-in.
    `scheduled`: False for kfp.local, which has no schedules (nor their placeholder):
    the resolve task then places a scheduled window at `schedule_time` (ISO 8601, as a
    schedule passes it; `imgpipe run --schedule-time`), else at the time it runs."""
    from kfp import dsl

    check_step_names(config, dag.load(location))
    steps = active_steps(location, config)
    comps = components(config, location)
    context = invoke.Context.from_config(config).to_json()
    params = runtime_parameters(config)

    def assemble(values: dict[str, Any]) -> None:
        run_id = dsl.PIPELINE_JOB_NAME_PLACEHOLDER
        resolve_args = {f"p_{name}": values[name]
                        for name in resolve_parameters(params, location, config)}
        if "data_spans" in params:      # only the resolve task sees the schedule time
            resolve_args["schedule_time"] = \
                dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER if scheduled else schedule_time
        pins = configure(comps[RESOLVE](context_json=context,
                                         configs_json=resolve_configs(config, location),
                                         **resolve_args), config, RESOLVE, cacheable=False)
        tasks: dict[str, Any] = {}

        def add(node: dag.Node):
            step_cfg = invoke.step_config(node, config)
            kwargs = {param: tasks[ref.split(".")[0]].outputs[ref.split(".")[1]]
                      for param, ref in node.inputs.items()}
            kwargs.update({f"pin_{p}": pins.outputs[f"{node.name}__{p}"]
                           for p in pin_params(node)})
            kwargs.update({f"p_{n}": values[n]
                           for n in parameters_for((*node.spec.config, *node.spec.record),
                                                    params)})
            if not node.spec.cache:
                kwargs["run_id"] = run_id
            else:
                kwargs["code"] = cache.task_code(node.spec.module)
            component = vertex_job(comps[node.name], config, node.name)
            task = component(
                config_json=json.dumps(without_runtime_keys(step_cfg), sort_keys=True),
                # a Shared folder lives beside the registry the context names
                context_json=context if invoke.needs_context(node, step_cfg)
                or node.spec.shared else "",
                **kwargs)
            for name in node.after:       # an order (and a stop), not an input
                task.after(tasks[name])
            tasks[node.name] = configure(task, config, node.name, node.spec.cache)

        def add_gated(nodes: list[dag.Node], gates: list[str]):
            if not gates:
                for node in nodes:
                    add(node)
                return
            gate = gates[0]
            with dsl.If(tasks[gate].outputs["Output"] == True,  # noqa: E712
                        name=f"{gate.replace('_', '-')}-passed"):
                add_gated(nodes, gates[1:])

        # Consecutive steps under the same gates share one dsl.If context: KFP refuses a
        # task that reads an output of a task inside another If (infer after push).
        groups: list[tuple[list[str], list[dag.Node]]] = []
        for node in steps:
            gates = dag.gates_of(node, steps)
            if groups and groups[-1][0] == gates:
                groups[-1][1].append(node)
            else:
                groups.append((gates, [node]))
        for gates, nodes in groups:
            add_gated(nodes, gates)
        configure(comps["report"](
            context_json=context, config_json=report_config(config, location), run_id=run_id,
            **{f"p_{name}": values[name] for name in _report_parameters(params, location)},
            **{ref.output: tasks[ref.step].outputs[ref.output] for ref in report_inputs()}),
        config, "report", cacheable=False)

    signature = ", ".join(f"{name}: {param_type(value)} = {value!r}"
                          for name, value in params.items())
    source = (f"def pipeline({signature}):\n"
              f"    assemble({{{', '.join(f'{n!r}: {n}' for n in params)}}})\n")
    fn = make_function("pipeline", source, {"assemble": assemble})
    return dsl.pipeline(name=config.name, description=f"imgpipe: {config.name} "
                        f"({config.model.kind} on {config.data.source})")(fn)


def check_step_names(config: PipelineConfig, steps: tuple[dag.Node, ...]) -> None:
    """Every kfp.steps key names a task of this pipeline (its DAG's steps, the report
    and resolve): a misspelt one would compile with its resources silently unused."""
    from components.errors import ConfigError
    from pipeline.config_kfp import DEFAULT_KFP_STEPS

    tasks = [node.name for node in steps] + ["report", RESOLVE]
    known = set(tasks) | set(DEFAULT_KFP_STEPS)     # a default for a step a DAG leaves out
    unknown = sorted(set(config.kfp.steps) - known)
    if unknown:
        raise ConfigError(f"kfp.steps.{unknown[0]}: this pipeline has no step "
                          f"{unknown[0]!r}; its steps are {', '.join(tasks)}. Fix the name "
                          "or remove it.")
