"""`imgpipe run CONFIG --engine kfp-docker`: the compiled pipeline with every task in a
container of its image (`kfp.image`, or a step's own), through kfp.local's
DockerRunner, recorded and reported as `--engine kfp-local` is (`pipeline.kfp.local`).

What the containers need to run a task as Kubernetes and Vertex AI run it:

- **The task's command replaces the image's ENTRYPOINT.** KFP gives every task a
  command (the IR's `container.command` + `args`); Kubernetes and Vertex AI's
  CustomJob replace an image's ENTRYPOINT with it. docker-py's `command` is docker's
  CMD, which the ENTRYPOINT (the step image's Beam boot program) would receive as
  arguments: the container would exit 0 having done nothing. The runner therefore sets
  the entrypoint to `/usr/bin/env`, which runs the command as given.
- **A task that wrote no outputs failed**, whatever its exit status (kfp.local counts
  a container it could not wait for as exit 0): `pipeline.kfp.local` checks each task's
  outputs.
- **The config's local paths** (data, schema, registry, batch-inference source, start
  weights) are mounted at the same paths, made absolute first: a task's working folder
  is the image's, not the caller's. The pipeline root is mounted by kfp.local itself.
- **Loopback services** (the GCS test server of `STORAGE_EMULATOR_HOST`) are reached
  on the host's network (`network_mode: host`), with the variables that point at them.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

from components.errors import ConfigError

ENGINE_DOCKER = "kfp-docker"
# The environment a task container gets from the caller's: where the storage client
# finds a test server, and nothing else of this machine.
PASSED_ENV = ("STORAGE_EMULATOR_HOST", "NO_GCE_CHECK")
# The task's command replaces the image's ENTRYPOINT, as on Kubernetes and Vertex AI.
ENTRYPOINT = ["/usr/bin/env"]


def _is_local(value: str | None) -> bool:
    return bool(value) and "://" not in value and not value.startswith("builtin:") \
        and ":" not in value.split("/")[0]


# The config's keys besides the registry that may name files on this machine.
PATH_KEYS = (("data", "source"), ("validate_", "schema_path"), ("infer", "source"),
             ("model", "weights"), ("train", "warm_start"))


def with_absolute_paths(config: Any) -> Any:
    """The config with its local paths absolute (a container's working folder is the
    image's): the registry, and each of PATH_KEYS that names a file (a span pattern
    kept)."""
    def absolute(value: str | None) -> str | None:
        return os.path.abspath(value) if _is_local(value) and (
            "{" in value or os.path.exists(value) or value.startswith(".")) else value

    copy = config.model_copy(deep=True)
    for section, key in PATH_KEYS:
        setattr(getattr(copy, section), key, absolute(getattr(getattr(copy, section), key)))
    copy.push.destination = os.path.abspath(copy.push.destination) \
        if _is_local(copy.push.destination) else copy.push.destination
    return copy


def mounts(config: Any) -> dict[str, str]:
    """{host folder: mode} the tasks read or write outside the pipeline root, from a
    config `with_absolute_paths`: the registry and the shared span store beside it
    read-write (created when absent), the others read-only."""
    from pipeline import invoke

    found: dict[str, str] = {}
    destination = config.push.destination
    if _is_local(destination):
        # the registry, and beside it the spans ingest keeps for later windows
        for folder in (destination, invoke.shared_root(destination)):
            os.makedirs(folder, exist_ok=True)
            found[folder] = "rw"
    for value in (getattr(getattr(config, section), key) for section, key in PATH_KEYS):
        if not _is_local(value) or not os.path.isabs(value):
            continue
        fixed = value.split("{", 1)[0].rsplit("/", 1)[0] if "{" in value else value
        folder = fixed if os.path.isdir(fixed) else os.path.dirname(fixed)
        if folder and not any(folder == m or folder.startswith(m.rstrip("/") + "/")
                              for m in found):
            found.setdefault(folder, "ro")
    return found


def check_image(client: Any, image: str) -> None:
    """The image is here (no registry is asked): one line naming how to build it."""
    import docker

    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise ConfigError(f"kfp.image {image!r} is not an image Docker has here; build the "
                          "step image with `make image` (tag imgpipe:local) and set "
                          "kfp.image: imgpipe:local, or `docker pull` yours first.") from None


def client() -> Any:
    """A Docker client that answers; one line naming the fix when Docker is not there."""
    try:
        import docker
    except ImportError:
        raise ConfigError("--engine kfp-docker needs the docker package (pip install "
                          "docker); it is in imgpipe's dependencies: reinstall imgpipe.") from None
    try:
        found = docker.from_env()
        found.ping()
        return found
    except Exception as exc:      # docker.errors.DockerException, a refused socket
        raise ConfigError(f"--engine kfp-docker: Docker is not reachable ({type(exc).__name__}: "
                          f"{str(exc)[:160]}); start the Docker daemon (dockerd) or use "
                          "--engine kfp-local.") from None


def images(config: Any, steps: tuple) -> set[str]:
    """Every image the run's tasks use (kfp.image and each step's own)."""
    return {config.kfp.image_for(node.name) for node in steps} | {config.kfp.image}


def runner(config: Any) -> Any:
    """kfp.local's DockerRunner for `config` (`with_absolute_paths`): entrypoint replaced,
    host network, the caller's storage-emulator variable."""
    from kfp import local

    environment = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
    return local.DockerRunner(entrypoint=ENTRYPOINT, network_mode="host",
                              **({"environment": environment} if environment else {}))


@contextlib.contextmanager
def task_containers(config: Any) -> Iterator[None]:
    """While a run lasts, kfp.local's Docker task handler mounts `mounts(config)` beside
    the pipeline root and keeps the runner's environment under a task's own variables
    (kfp.local replaces the one with the other)."""
    from kfp.local import docker_task_handler

    handler = docker_task_handler.DockerTaskHandler
    extra = mounts(config)

    class Handler(handler):
        def get_volumes_to_mount(self, client: Any = None) -> dict[str, Any]:
            volumes = super().get_volumes_to_mount(client)
            for folder, mode in extra.items():
                volumes.setdefault(folder, {"bind": folder, "mode": mode})
            return volumes

        def run(self) -> Any:
            given = dict(self.runner.container_run_args.get("environment") or {})
            self.env_vars = {**given, **(self.env_vars or {})}
            return super().run()

    run_container = docker_task_handler.run_docker_container
    docker_task_handler.DockerTaskHandler = Handler     # read per task by kfp.local
    docker_task_handler.run_docker_container = run_and_wait
    try:
        yield
    finally:
        docker_task_handler.DockerTaskHandler = handler
        docker_task_handler.run_docker_container = run_container


def run_and_wait(client: Any, image: str, command: list[str], volumes: dict[str, Any],
                 **run_args: Any) -> int:
    """A task's container, its logs printed, and its real exit status. kfp.local's own
    (2.17.0) starts it with auto_remove and takes a container already removed when it
    asks for the status for a success: a task that failed fast (resolve stopping on a
    missing day) then passed as one that wrote nothing. This one removes it only after
    reading the status."""
    container = client.containers.run(image=image, command=command, detach=True,
                                      stdout=True, stderr=True, volumes=volumes, **run_args)
    try:
        for line in container.logs(stream=True):
            print(line.decode(), end="")
        return int(container.wait()["StatusCode"])
    finally:
        try:
            container.remove(force=True)
        except Exception:       # already gone: nothing left to clean up
            pass


def prepare(config: Any, steps: tuple) -> Any:
    """The config the docker engine compiles and runs (absolute paths), after checking
    that Docker answers and has every image the tasks use."""
    found = client()
    try:
        for image in sorted(images(config, steps)):
            check_image(found, image)
    finally:
        found.close()
    return with_absolute_paths(config)
