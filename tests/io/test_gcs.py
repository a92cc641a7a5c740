"""gs:// end to end against GCS protocol servers the tests start on 127.0.0.1: the
storage layer, artifacts, the registry's version claims and alias compare-and-swap
under concurrent processes (fake-gcs-server, which enforces preconditions), and the
Beam data steps reading a bucket and writing their artifacts there
(gcp-storage-emulator, which Beam's file sinks work with)."""

from __future__ import annotations

import json
import os

import pytest

from tests import fixtures, gcs_server

# fake_gcs and on_fake (fake-gcs-server) are tests/conftest.py's: other folders' tests use
# them too; the gcp-storage-emulator pair only this file uses.


@pytest.fixture(scope="module")
def beam_gcs():
    proc, url = gcs_server.started("gcp-storage-emulator")
    yield url
    gcs_server.stop(proc)


@pytest.fixture
def on_beam(beam_gcs, monkeypatch):
    from components.io import gcs

    yield gcs_server.point_at(beam_gcs, monkeypatch)
    gcs._client_for.cache_clear()


class _OtherServer:
    """Another test's GCS server (as under pytest-xdist) holding a port: answers 200."""

    def __init__(self):
        import http.server
        import threading

        hits = self.hits = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                body = b'{"kind": "storage#buckets", "items": []}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.mark.parametrize("which", ["fake-gcs-server", "gcp-storage-emulator"])
def test_a_started_server_is_its_own_even_when_its_port_was_taken(which, monkeypatch):
    """A port picked free can be taken by another worker's server before ours binds it:
    start() hands back its own server, and nothing of ours talks to the other one."""
    import urllib.request

    reason = gcs_server.available(which)
    if reason:
        pytest.skip(reason)
    other = _OtherServer()
    taken = [other.port]
    pick = gcs_server._free_port
    monkeypatch.setattr(gcs_server, "_free_port", lambda: taken.pop() if taken else pick())
    proc = None
    try:
        proc, url = gcs_server.start(which)
        assert url != f"http://127.0.0.1:{other.port}"
        request = urllib.request.Request(f"{url}/storage/v1/b?project=p", method="POST",
                                         data=b'{"name": "mine"}',
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10).close()
        with urllib.request.urlopen(f"{url}/storage/v1/b?project=p", timeout=10) as reply:
            assert [b["name"] for b in json.load(reply)["items"]] == ["mine"]
        assert other.hits == []
    finally:
        if proc is not None:
            gcs_server.stop(proc)
        other.close()


def test_pointing_at_a_server_is_undone_when_the_test_ends(monkeypatch):
    """gcs_server.use() changes the process's environment and Beam's credentials only
    for the test that calls it (other tests on the same worker see neither)."""
    from apache_beam.internal.gcp import auth

    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.delenv("NO_GCE_CHECK", raising=False)
    before = (auth._Credentials._credentials_init, auth._Credentials._credentials)
    with pytest.MonkeyPatch.context() as inner:
        gcs_server.use("http://127.0.0.1:1", inner)
        assert os.environ["STORAGE_EMULATOR_HOST"] == "http://127.0.0.1:1"
        assert os.environ["NO_GCE_CHECK"] == "true" and auth._Credentials._credentials_init
    assert "STORAGE_EMULATOR_HOST" not in os.environ and "NO_GCE_CHECK" not in os.environ
    assert (auth._Credentials._credentials_init, auth._Credentials._credentials) == before


def test_storage_layer_on_gcs(on_fake):
    from components.io import fileio

    root = f"{on_fake}/layer"
    fileio.write_text(f"{root}/a/x.txt", "hello")
    fileio.write_bytes_atomic(f"{root}/a/b/y.bin", b"\x00\x01")
    assert fileio.read_text(f"{root}/a/x.txt") == "hello"
    assert fileio.exists(f"{root}/a") and fileio.isdir(f"{root}/a")
    assert not fileio.isdir(f"{root}/a/x.txt") and not fileio.exists(f"{root}/nope")
    assert fileio.listdir(f"{root}/a") == ["b", "x.txt"]
    assert list(fileio.walk_files(root)) == [f"{root}/a/b/y.bin", f"{root}/a/x.txt"]
    assert fileio.glob(f"{root}/a/*.txt") == [f"{root}/a/x.txt"]
    assert fileio.file_size(f"{root}/a/b/y.bin") == 2 and fileio.file_size(f"{root}/no") is None
    import hashlib
    assert fileio.hash_file(f"{root}/a/x.txt") == hashlib.sha256(b"hello").hexdigest()
    fileio.copy(f"{root}/a/x.txt", f"{root}/c/x.txt")
    assert fileio.read_text(f"{root}/c/x.txt") == "hello"
    # conditional writes: create-if-absent, compare-and-swap on the generation
    assert fileio.create_if_absent(f"{root}/claim", b"first")
    assert not fileio.create_if_absent(f"{root}/claim", b"second")
    data, generation = fileio.read_versioned(f"{root}/claim")
    assert data == b"first" and generation > 0
    assert fileio.swap(f"{root}/claim", b"next", generation)
    assert not fileio.swap(f"{root}/claim", b"stale", generation)
    assert fileio.read_versioned(f"{root}/nothing") == (b"", 0)
    fileio.rmtree(root)
    assert not fileio.exists(root)


def test_artifacts_on_gcs_are_committed_by_their_manifest(on_fake):
    from components import artifacts
    from components.io import fileio
    from components.errors import ArtifactError

    uri = f"{on_fake}/runs/r1/train/model"
    graph = f"{artifacts.Model.SAVED_MODEL}/{artifacts.SAVED_MODEL_PB}"
    with artifacts.writing(uri, "Model") as writer:
        fileio.write_text(writer.file(artifacts.Model.SAVED_MODEL, artifacts.SAVED_MODEL_PB),
                          "graph")
        with pytest.raises(ArtifactError, match="not a committed artifact"):
            artifacts.read(uri)                     # no manifest yet: does not exist
        art = writer.commit()
    assert artifacts.read(uri).files == art.files and set(art.files) == {graph}
    assert artifacts.verify(art)[0] == []
    fileio.write_text(f"{uri}/{graph}", "tampered")
    assert f"{graph} changed" in artifacts.verify(art)[0][0]


def _card():
    return {"blessing": {"blessed": True, "reason": "ok"},
            "infra_validation": {"passed": True, "reason": "served"}}


def _push(url, root, source, marker, barrier, queue):
    from components.io import gcs
    from components.registry.versions import Registry

    os.environ["STORAGE_EMULATOR_HOST"] = url
    gcs._client_for.cache_clear()           # a forked process needs its own connections
    barrier.wait()
    queue.put(Registry(root).push("m", source, dict(_card(), marker=marker)).version)


def test_concurrent_pushes_to_a_bucket_claim_distinct_versions(on_fake, fake_gcs, tmp_path):
    from components.io import fileio
    from components.registry.versions import Registry

    root = f"{on_fake}/serving-push"
    sources = []
    for i in range(4):
        folder = tmp_path / f"sm{i}"
        (folder / "variables").mkdir(parents=True)
        (folder / "saved_model.pb").write_text(str(i) * 100)
        (folder / "variables" / "variables.index").write_text(str(i))
        sources.append(str(folder))
    codes, versions = fixtures.race(_push, [(fake_gcs, root, sources[i], i) for i in range(4)],
                                    timeout=120)
    assert codes == [0] * 4 and sorted(versions) == [1, 2, 3, 4]
    registry = Registry(root)
    for version in registry.versions("m"):
        marker = str(version.card["marker"])
        assert fileio.read_text(f"{version.path}/saved_model.pb") == marker * 100   # whole
        assert fileio.read_text(f"{version.path}/variables/variables.index") == marker
    # a claimed number whose push died (no saved_model.pb) is never a version
    fileio.create_if_absent(f"{root}/m/5/.claim", b"{}")
    fileio.write_text(f"{root}/m/5/variables/variables.index", "half")
    assert [v.version for v in registry.versions("m")] == [1, 2, 3, 4]
    assert registry.push("m", sources[0], _card()).version == 6


def _rollback(url, root, barrier, queue):
    from components.io import gcs
    from components.registry.versions import Registry

    os.environ["STORAGE_EMULATOR_HOST"] = url
    gcs._client_for.cache_clear()
    barrier.wait()
    entry = Registry(root).rollback("m", "production")
    queue.put((entry["from"], entry["to"]))


def test_alias_changes_on_a_bucket_are_compare_and_swap(on_fake, fake_gcs, tmp_path):
    from components.registry.versions import Registry

    root = f"{on_fake}/serving-alias"
    folder = tmp_path / "sm"
    folder.mkdir()
    (folder / "saved_model.pb").write_text("graph")
    registry = Registry(root)
    for version in range(1, 6):
        registry.push("m", str(folder), _card())
        registry.set_alias(f"m:{version}", "production")
    assert registry.set_alias("m:5", "production").get("unchanged")
    codes, moves = fixtures.race(_rollback, [(fake_gcs, root)] * 2, timeout=120)
    assert codes == [0, 0] and sorted(moves) == [(4, 3), (5, 4)]
    assert registry.aliases("m") == {"production": 3}
    assert [e["to"] for e in registry.audit("m")] == [1, 2, 3, 4, 5, 4, 3]
    from components.io import fileio

    assert json.loads(fileio.read_text(f"{root}/m/aliases.json")) == {"production": 3}
    registry.record_pipeline_state("m", {"ingest.statistics": f"{root}/x"})
    assert registry.pipeline_state("m") == {"ingest.statistics": f"{root}/x"}


def _idx(data, dims):
    return bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims) + \
        data.tobytes()


def _bucket_source(kind, bucket, tmp_path):
    """data.source of `kind` in the bucket, and how many examples it holds."""
    import csv
    import gzip
    import io

    import numpy as np

    from components.io import fileio

    base = f"{bucket}/{kind}"
    if kind in ("folders", "csv", "jsonl"):
        local = tmp_path / "src"
        fixtures.make_class_folders(str(local), per_class=8)
        paths = sorted(local.rglob("*.png"))
        for path in paths:
            fileio.write_bytes(f"{base}/images/{path.relative_to(local)}", path.read_bytes())
        rows = [{"path": f"images/{p.relative_to(local)}", "label": p.parent.name}
                for p in paths]
        if kind == "csv":
            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=["path", "label"])
            writer.writeheader()
            writer.writerows(rows)
            fileio.write_text(f"{base}/manifest.csv", text.getvalue())
            return f"{base}/manifest.csv", 24
        if kind == "jsonl":            # absolute gs:// URIs this time
            fileio.write_text(f"{base}/manifest.jsonl", "".join(
                json.dumps({"uri": f"{base}/{r['path']}", "label": r["label"]}) + "\n"
                for r in rows))
            return f"{base}/manifest.jsonl", 24
        return f"{base}/images", 24
    if kind == "npz":
        images = np.stack([fixtures.class_pattern(i % 2, i, 12) for i in range(20)])
        buffer = io.BytesIO()
        np.savez(buffer, images=images.astype(np.uint8), labels=np.arange(20) % 2)
        fileio.write_bytes(f"{base}/data.npz", buffer.getvalue())
        return f"{base}/data.npz", 20
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 4)):
        images = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 3).astype(np.uint8)
        gz = prefix == "train"               # one pair gzipped (as published), one not
        for name, blob in ((f"{prefix}-images-idx3-ubyte", _idx(images, [n, 28, 28])),
                           (f"{prefix}-labels-idx1-ubyte", _idx(labels, [n]))):
            fileio.write_bytes(f"{base}/{name}" + (".gz" if gz else ""),
                               gzip.compress(blob) if gz else blob)
    return base, 16


@pytest.mark.parametrize("kind", ["folders", "csv", "jsonl", "npz", "idx"])
def test_ingest_and_validate_read_a_bucket_and_write_there(on_beam, tmp_path, kind):
    """data.source on gs:// (class folders, CSV and JSONL manifests, an NPZ file, IDX
    files), the Examples and Statistics artifacts written to gs:// by Beam's sinks,
    validation reading them back from the bucket."""
    from components import artifacts
    from components.io import fileio
    from components.config.beam import BeamConfig
    from components.config.data import DataConfig
    from components.config.ingest import IngestConfig
    from components.config.validate import ValidateConfig
    from components.steps import ingest, validate

    source, count = _bucket_source(kind, on_beam, tmp_path)
    runs = f"{on_beam}/runs-{kind}"
    summary = ingest.run(DataConfig(source=source, eval_fraction=0.25),
                         IngestConfig(), BeamConfig(),
                         examples=f"{runs}/ingest/examples",
                         statistics=f"{runs}/ingest/statistics")
    assert summary["num_examples"] == count
    examples = artifacts.read(f"{runs}/ingest/examples", artifacts.Examples)
    assert sum(sum(c.values()) for c in examples.properties["counts"].values()) == count
    assert fileio.glob(f"{runs}/ingest/examples/train/*.tfrecord.gz")
    statistics = artifacts.read(f"{runs}/ingest/statistics", artifacts.ExampleStatistics)
    assert artifacts.verify(statistics)[0] == []
    # the synthetic arrays repeat patterns across splits: near-duplicates are their data's
    # property, not the storage's
    cfg = ValidateConfig() if kind == "folders" else ValidateConfig(max_near_duplicate_fraction=1.0)
    result = validate.run(statistics, cfg, anomalies=f"{runs}/v/a", schema=f"{runs}/v/s")
    assert artifacts.read(f"{runs}/v/a", artifacts.ExampleAnomalies).properties["num_errors"] == 0
    if kind == "folders":
        assert result["num_anomalies"] == 0


def test_tensorflow_paths_go_through_the_mount_only_where_the_bucket_is_mounted(
        tmp_path, monkeypatch):
    """A folder named /gcs that is not a mount (a self-hosted KFP node) must not take
    TensorFlow's writes while the storage layer looks in the bucket."""
    from components.io import fileio

    mount = tmp_path / "gcs"
    (mount / "b").mkdir(parents=True)
    monkeypatch.setattr(fileio, "GCS_MOUNT", str(mount))
    assert fileio.tf_path("gs://b/runs/model") == "gs://b/runs/model"
    assert fileio.tf_path(str(tmp_path / "x")) == str(tmp_path / "x")
    real = os.path.ismount
    for mounted in (str(mount), str(mount / "b")):        # /gcs itself, or /gcs/BUCKET
        monkeypatch.setattr(os.path, "ismount", lambda p, m=mounted: p == m or real(p))
        assert fileio.tf_path("gs://b/runs/model") == str(mount / "b" / "runs" / "model")
    monkeypatch.setattr(os.path, "ismount", lambda p: p == str(mount / "b") or real(p))
    assert fileio.tf_path("gs://other/x") == "gs://other/x"


def _resolve(cfg, **params):
    """The KFP resolve task's outputs for `cfg`, called as the compiled task calls it
    (its configs and the run-time parameters, `params` overriding the defaults)."""
    from pipeline import invoke
    from pipeline.kfp import compile as kfp_compile
    from pipeline.kfp import builder as kfp_builder
    from pipeline.kfp import entrypoint as kfp_entry

    values = {**kfp_compile.runtime_parameters(cfg), **params}
    names = kfp_builder.resolve_parameters(values)
    overrides = {kfp_compile.RUNTIME_PARAMETERS[n]: values[n] for n in names
                 if n != "baseline_alias"}
    pins = kfp_entry.resolve_pins(invoke.Context.from_config(cfg).to_json(),
                                  values["baseline_alias"], kfp_compile.resolve_configs(cfg),
                                  overrides)
    return pins._asdict()


def test_kfp_pins_change_exactly_when_outside_inputs_do(on_fake, tmp_path, monkeypatch):
    """On KFP a task is reused while its inputs are unchanged, so the resolve task pins
    what a step reads from outside the run: new objects under the bucket source change
    ingest's pin (only), an edited schema validate's, a moved production alias the
    start weights' of tune and train; nothing changed gives identical pins."""
    from components import artifacts
    from components.io import fileio
    from components.registry.versions import Registry
    from pipeline import config as config_lib
    from pipeline import invoke
    from pipeline.kfp import entrypoint as kfp_entry

    monkeypatch.setattr(kfp_entry, "_exit_without_teardown", lambda: None)
    root = f"{on_fake}/pins"
    local = tmp_path / "src"
    fixtures.make_class_folders(str(local), per_class=3)
    for path in sorted(local.rglob("*.png")):
        fileio.write_bytes(f"{root}/photos/{path.relative_to(local)}", path.read_bytes())
    fileio.write_text(f"{root}/schema.pbtxt", "feature { name: 'image' }\n")
    model = tmp_path / "sm"
    model.mkdir()
    (model / "saved_model.pb").write_text("graph")
    (model / artifacts.Model.KERAS_FILE).write_text("weights")
    registry = Registry(f"{root}/serving")
    for _ in range(2):
        registry.push("base", str(model), _card())
    registry.set_alias("base:1", "production")
    cfg = config_lib.from_dict({
        "name": "photos", "data": {"source": f"{root}/photos"},
        "validate": {"schema": f"{root}/schema.pbtxt"},
        "model": {"kind": "transfer", "weights": "base@production"},
        "push": {"destination": f"{root}/serving"}})

    first = _resolve(cfg)
    assert set(first) >= {"ingest__external", "validate__external", "tune__external",
                          "train__external", "validate__baseline_statistics",
                          "evaluate__baseline"}
    assert _resolve(cfg) == first                           # nothing changed: same inputs
    train_pin = json.loads(first["train__external"])
    assert train_pin["refs"] == {"model.weights": "base:1"}
    # the train task resolves the pinned version, not the alias again (its section keeps
    # the reference as configured)
    step_cfg = invoke.apply_pinned_refs({"model": {"weights": "base@production"}}, train_pin)
    assert step_cfg["model"]["weights"] == "base@production"
    assert step_cfg[invoke.PINNED] == {"model.weights": "base:1"}

    def changed(before, after):
        return {key for key in before if before[key] != after[key]}

    fileio.write_bytes(f"{root}/photos/cat/new.png", (local / "cat" / "000.png").read_bytes())
    second = _resolve(cfg)
    assert changed(first, second) == {"ingest__external"}
    fileio.write_text(f"{root}/schema.pbtxt", "feature { name: 'image' } # edited\n")
    third = _resolve(cfg)
    assert changed(second, third) == {"validate__external"}
    registry.set_alias("base:2", "production")
    fourth = _resolve(cfg)
    assert changed(third, fourth) == {"tune__external", "train__external"}
    assert json.loads(fourth["train__external"])["refs"] == {"model.weights": "base:2"}
    assert _resolve(cfg) == fourth
    # the data source as a run-time parameter: another folder, another pin
    other = _resolve(cfg, data_source=f"{root}/photos/cat")
    assert changed(fourth, other) == {"ingest__external"}
    fileio.rmtree(root)
