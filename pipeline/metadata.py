"""The embedded metadata store: runs, executions, artifacts and the events linking them.

One SQLite file under the runs directory (WAL mode, short IMMEDIATE transactions and
a busy timeout, so two runs started at once both record everything). Lineage
questions are queries here: which run and inputs produced an artifact, which
executions consumed it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

from components import runtime
from components.errors import ImgpipeError

# The store's file in a runs folder.
METADATA_FILE = "metadata.sqlite"
# The cache key of executions run by an engine without this store's cache keys
# (kfp.local): never reused, never compared with a key.
UNKEYED = "unkeyed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    config_path TEXT,
    config_json TEXT NOT NULL,
    status TEXT NOT NULL,            -- running | succeeded | failed
    error TEXT,
    started TEXT NOT NULL,
    ended TEXT,
    process TEXT,                    -- host:pid:start-time of the process running it
    engine TEXT                      -- local | kfp-local | kfp-docker (NULL: local, before it was kept)
);
CREATE TABLE IF NOT EXISTS executions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES runs(id),
    step TEXT NOT NULL,
    status TEXT NOT NULL,            -- running | succeeded | failed | cached
    cache_key TEXT NOT NULL,
    key_parts TEXT NOT NULL,         -- JSON: what went into the key
    decision TEXT NOT NULL,          -- why it ran or was reused
    cached_from INTEGER REFERENCES executions(id),
    summary TEXT,                    -- JSON returned by the step
    error TEXT,
    started TEXT NOT NULL,
    ended TEXT
);
CREATE INDEX IF NOT EXISTS executions_key ON executions(step, cache_key, status);
CREATE TABLE IF NOT EXISTS artifacts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uri TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    properties TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS verified_files (
    uri TEXT NOT NULL,               -- an artifact
    rel TEXT NOT NULL,               -- a file in it
    signature TEXT NOT NULL,         -- size:mtime_ns:ctime_ns:inode when its content was checked
    PRIMARY KEY (uri, rel)
);
CREATE TABLE IF NOT EXISTS events (
    execution_id INTEGER NOT NULL REFERENCES executions(id),
    artifact_id INTEGER NOT NULL REFERENCES artifacts(id),
    kind TEXT NOT NULL,              -- input | output
    name TEXT NOT NULL,
    PRIMARY KEY (execution_id, artifact_id, kind, name)
);
"""

def _now() -> str:
    return runtime.utc_now("milliseconds")


def new_run_id() -> str:
    """Sortable and unique across concurrent starts: time plus random suffix."""
    return f"{runtime.utc_compact()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class Execution:
    id: int
    run_id: str
    step: str
    status: str
    cache_key: str
    key_parts: dict[str, Any]
    decision: str
    cached_from: int | None
    summary: dict[str, Any] | None
    error: str | None
    started: str
    ended: str | None


@dataclass(frozen=True)
class ArtifactRecord:
    id: int
    uri: str
    type: str
    fingerprint: str
    properties: dict[str, Any]
    created: str


class MetadataStore:
    """Lineage store on SQLite. Safe for concurrent runs in separate processes."""

    def __init__(self, path: str, read_only: bool = False):
        """`read_only`: for commands that only look (runs list/show), which then work on
        a runs folder that cannot be written."""
        self.path = path
        self.read_only = read_only
        if read_only:
            return
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with self._connect() as conn:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(_SCHEMA)
                columns = {row["name"] for row in conn.execute("PRAGMA table_info(runs)")}
                for column in ("process", "engine"):   # a store from before runs kept it
                    if column not in columns:
                        conn.execute(f"ALTER TABLE runs ADD COLUMN {column} TEXT")
        except (OSError, sqlite3.Error) as exc:
            raise ImgpipeError(f"cannot write the metadata store {path} ({exc}); the runs "
                               "folder must be writable and have free space: free some or "
                               "pass --runs-dir elsewhere.") from exc

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = self._open()
        except sqlite3.Error as exc:
            raise ImgpipeError(f"cannot open the metadata store {self.path} ({exc}).") from exc
        try:
            yield conn
        except sqlite3.OperationalError as exc:
            if "full" in str(exc) or "readonly" in str(exc) or "disk" in str(exc):
                raise ImgpipeError(f"the metadata store {self.path} cannot be written ({exc}); "
                                   "free space or pass --runs-dir elsewhere.") from exc
            raise
        finally:
            conn.close()

    def _open(self) -> sqlite3.Connection:
        if not self.read_only:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        else:
            base = f"file:{os.path.abspath(self.path)}?mode=ro"
            try:
                conn = sqlite3.connect(base, timeout=60, isolation_level=None, uri=True)
                conn.execute("SELECT 1 FROM runs LIMIT 1")
            except sqlite3.Error:
                # a folder we cannot write: read the file as it is (WAL ignored)
                conn = sqlite3.connect(base + "&immutable=1", timeout=60,
                                       isolation_level=None, uri=True)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout=60000")
        return conn

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # --- runs ----------------------------------------------------------------------

    def start_run(self, pipeline: str, config: dict[str, Any], config_path: str | None,
                  engine: str = "local") -> str:
        run_id = new_run_id()
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO runs (id, pipeline, config_path, config_json, status, started, "
                "process, engine) VALUES (?, ?, ?, ?, 'running', ?, ?, ?)",
                (run_id, pipeline, config_path, json.dumps(config, sort_keys=True), _now(),
                 runtime.process_identity(), engine))
        return run_id

    def end_run(self, run_id: str, status: str, error: str | None = None) -> None:
        """Ends the run, and every execution of it still running (a step beside the one
        that failed or was interrupted: it ends with the run, as its child process does)."""
        now = _now()
        with self._transaction() as conn:
            conn.execute("UPDATE runs SET status=?, error=?, ended=? WHERE id=?",
                         (status, error, now, run_id))
            conn.execute("UPDATE executions SET status='failed', error=?, ended=? "
                         "WHERE run_id=? AND status='running'",
                         (f"ended with the run: {error or status}", now, run_id))

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        return self._run_dict(row) if row else None

    def list_runs(self, pipeline: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        query, args = "SELECT * FROM runs", []
        if pipeline:
            query, args = query + " WHERE pipeline=?", [pipeline]
        with self._connect() as conn:
            rows = conn.execute(query + " ORDER BY started DESC, id DESC LIMIT ?",
                                (*args, limit)).fetchall()
        return [self._run_dict(row) for row in rows]

    def page_runs(self, pipeline: str | None = None, status: str | None = None,
                  offset: int = 0, limit: int = 50) -> tuple[list[dict[str, Any]], int]:
        """One page of runs, newest first, and how many match (`imgpipe ui`'s list: a
        page of a large runs folder reads only its own rows)."""
        where, args = [], []
        if pipeline:
            where, args = where + ["pipeline=?"], args + [pipeline]
        if status:
            where, args = where + ["status=?"], args + [status]
        clause = " WHERE " + " AND ".join(where) if where else ""
        with self._connect() as conn:
            total = conn.execute("SELECT COUNT(*) FROM runs" + clause, args).fetchone()[0]
            rows = conn.execute("SELECT * FROM runs" + clause +
                                " ORDER BY started DESC, id DESC LIMIT ? OFFSET ?",
                                (*args, limit, offset)).fetchall()
        return [self._run_dict(row) for row in rows], int(total)

    def pipelines(self) -> list[str]:
        """The pipeline names that have runs."""
        with self._connect() as conn:
            return [row[0] for row in conn.execute(
                "SELECT DISTINCT pipeline FROM runs ORDER BY pipeline")]

    def executions_of(self, run_ids: list[str]) -> dict[str, list[Execution]]:
        """run id -> its executions in order, for several runs in one query."""
        out: dict[str, list[Execution]] = {run_id: [] for run_id in run_ids}
        if not run_ids:
            return out
        marks = ",".join("?" * len(run_ids))
        with self._connect() as conn:
            rows = conn.execute(f"SELECT * FROM executions WHERE run_id IN ({marks}) "
                                "ORDER BY id", run_ids).fetchall()
        for row in rows:
            out[row["run_id"]].append(self._execution(row))
        return out

    @staticmethod
    def _run_dict(row: sqlite3.Row) -> dict[str, Any]:
        """A run; one still 'running' whose process is gone reads as 'died'."""
        out = dict(row)
        out["config"] = json.loads(out.pop("config_json"))
        out["engine"] = out.get("engine") or "local"
        if out["status"] == "running" and runtime.process_alive(out.get("process")) is False:
            out["status"] = "died"
            out["error"] = out["error"] or (f"its process ({out['process'].split(':')[1]}) "
                                            "ended without recording an end (killed?)")
        return out

    # --- executions ----------------------------------------------------------------

    def start_execution(self, run_id: str, step: str, cache_key: str,
                        key_parts: dict[str, Any], decision: str) -> int:
        with self._transaction() as conn:
            cur = conn.execute(
                "INSERT INTO executions (run_id, step, status, cache_key, key_parts, decision,"
                " started) VALUES (?, ?, 'running', ?, ?, ?, ?)",
                (run_id, step, cache_key, json.dumps(key_parts, sort_keys=True), decision, _now()))
            return int(cur.lastrowid)

    def record_cached(self, run_id: str, step: str, source: Execution, decision: str) -> int:
        """Records a reuse: a new execution row pointing at the one it reuses, with the
        same output artifacts linked, so lineage queries see the run's full DAG."""
        now = _now()
        with self._transaction() as conn:
            cur = conn.execute(
                "INSERT INTO executions (run_id, step, status, cache_key, key_parts, decision,"
                " cached_from, summary, started, ended) VALUES (?, ?, 'cached', ?, ?, ?, ?, ?, ?, ?)",
                (run_id, step, source.cache_key, json.dumps(source.key_parts, sort_keys=True),
                 decision, source.id, json.dumps(source.summary), now, now))
            new_id = int(cur.lastrowid)
            conn.execute(
                "INSERT INTO events (execution_id, artifact_id, kind, name) "
                "SELECT ?, artifact_id, kind, name FROM events WHERE execution_id=?",
                (new_id, source.id))
        return new_id

    def finish_execution(self, execution_id: int, status: str, summary: Any = None,
                         error: str | None = None) -> None:
        with self._transaction() as conn:
            conn.execute("UPDATE executions SET status=?, summary=?, error=?, ended=? WHERE id=?",
                         (status, json.dumps(summary, default=str), error, _now(), execution_id))

    def executions(self, run_id: str) -> list[Execution]:
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM executions WHERE run_id=? ORDER BY id",
                                (run_id,)).fetchall()
        return [self._execution(row) for row in rows]

    def find_cached(self, step: str, cache_key: str) -> list[Execution]:
        """Successful executions (newest first) of `step` with exactly this key."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT * FROM executions WHERE step=? AND cache_key=? AND status='succeeded' "
                "ORDER BY id DESC", (step, cache_key)).fetchall()
        return [self._execution(row) for row in rows]

    def last_execution(self, pipeline: str, step: str) -> Execution | None:
        """The newest successful execution of `step` in this pipeline (for key diffs and
        baselines such as the previous run's statistics)."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT e.* FROM executions e JOIN runs r ON r.id = e.run_id "
                "WHERE r.pipeline=? AND e.step=? AND e.status IN ('succeeded', 'cached') "
                "AND e.cache_key != ? ORDER BY e.id DESC LIMIT 1",
                (pipeline, step, UNKEYED)).fetchone()
        return self._execution(row) if row else None

    def previous_output(self, pipeline: str, step: str, output: str,
                        exclude_run: str) -> ArtifactRecord | None:
        """`step.output` of the newest *successful* run of `pipeline` other than
        `exclude_run`: the baseline that drift checks compare against."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT a.* FROM runs r JOIN executions e ON e.run_id = r.id "
                "JOIN events ev ON ev.execution_id = e.id AND ev.kind='output' AND ev.name=? "
                "JOIN artifacts a ON a.id = ev.artifact_id "
                "WHERE r.pipeline=? AND r.status='succeeded' AND r.id != ? AND e.step=? "
                "ORDER BY r.started DESC, r.id DESC LIMIT 1",
                (output, pipeline, exclude_run, step)).fetchone()
        if row is None:
            return None
        return ArtifactRecord(id=row["id"], uri=row["uri"], type=row["type"],
                              fingerprint=row["fingerprint"],
                              properties=json.loads(row["properties"]), created=row["created"])

    def run_output(self, run_id: str, step: str, output: str) -> ArtifactRecord | None:
        """`step.output` of run `run_id` (a unique prefix is enough), if it produced one."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT a.*, r.id AS run FROM runs r JOIN executions e ON e.run_id = r.id "
                "JOIN events ev ON ev.execution_id = e.id AND ev.kind='output' AND ev.name=? "
                "JOIN artifacts a ON a.id = ev.artifact_id "
                "WHERE r.id LIKE ? AND e.step=? AND e.status IN ('succeeded', 'cached')",
                (output, run_id + "%", step)).fetchall()
        if len({row["run"] for row in rows}) != 1:
            return None
        row = rows[0]
        return ArtifactRecord(id=row["id"], uri=row["uri"], type=row["type"],
                              fingerprint=row["fingerprint"],
                              properties=json.loads(row["properties"]), created=row["created"])

    @staticmethod
    def _execution(row: sqlite3.Row) -> Execution:
        return Execution(
            id=row["id"], run_id=row["run_id"], step=row["step"], status=row["status"],
            cache_key=row["cache_key"], key_parts=json.loads(row["key_parts"]),
            decision=row["decision"], cached_from=row["cached_from"],
            summary=json.loads(row["summary"]) if row["summary"] else None,
            error=row["error"], started=row["started"], ended=row["ended"])

    # --- artifacts and events ------------------------------------------------------

    def record_artifact(self, execution_id: int, kind: str, name: str, uri: str, type_: str,
                        fingerprint: str, properties: dict[str, Any], created: str) -> int:
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO artifacts (uri, type, fingerprint, properties, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (uri, type_, fingerprint, json.dumps(properties, default=str), created))
            artifact_id = conn.execute("SELECT id FROM artifacts WHERE uri=?",
                                       (uri,)).fetchone()["id"]
            conn.execute("INSERT OR IGNORE INTO events (execution_id, artifact_id, kind, name) "
                         "VALUES (?, ?, ?, ?)", (execution_id, artifact_id, kind, name))
        return int(artifact_id)

    def record_artifacts(self, execution_id: int, kind: str, arts: dict[str, Any]) -> None:
        """Links each artifact (`components.artifacts.Artifact`; None is skipped) to the
        execution as its input or output `name`."""
        for name, art in arts.items():
            if art is not None:
                self.record_artifact(execution_id, kind, name, art.uri, art.type,
                                     art.fingerprint, art.properties, art.created)

    def artifacts_of(self, execution_id: int, kind: str | None = None) -> list[dict[str, Any]]:
        query = ("SELECT a.*, ev.kind AS event, ev.name AS name FROM events ev "
                 "JOIN artifacts a ON a.id = ev.artifact_id WHERE ev.execution_id=?")
        args: list[Any] = [execution_id]
        if kind:
            query += " AND ev.kind=?"
            args.append(kind)
        with self._connect() as conn:
            rows = conn.execute(query + " ORDER BY ev.kind, ev.name", args).fetchall()
        return [{**dict(row), "properties": json.loads(row["properties"])} for row in rows]

    def producer_of(self, uri: str) -> Execution | None:
        """The execution that first wrote the artifact at `uri` (not a cache reuse)."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT e.* FROM executions e JOIN events ev ON ev.execution_id = e.id "
                "JOIN artifacts a ON a.id = ev.artifact_id "
                "WHERE a.uri=? AND ev.kind='output' AND e.status='succeeded' "
                "ORDER BY e.id LIMIT 1", (uri,)).fetchone()
        return self._execution(row) if row else None

    def lineage(self, uri: str) -> list[dict[str, Any]]:
        """Every upstream artifact of `uri`, nearest first: (step, name, uri, fingerprint)."""
        out: list[dict[str, Any]] = []
        frontier, seen = [uri], {uri}
        while frontier:
            current = frontier.pop(0)
            producer = self.producer_of(current)
            if producer is None:
                continue
            for art in self.artifacts_of(producer.id, "input"):
                if art["uri"] in seen:
                    continue
                seen.add(art["uri"])
                out.append({"consumed_by": producer.step, "name": art["name"],
                            "uri": art["uri"], "type": art["type"],
                            "fingerprint": art["fingerprint"], "run_id": producer.run_id})
                frontier.append(art["uri"])
        return out

    # --- content checks of cached artifacts ------------------------------------------

    def file_signatures(self, uri: str) -> dict[str, str]:
        """rel path -> stat signature of the files of `uri` whose content was verified."""
        with self._connect() as conn:
            rows = conn.execute("SELECT rel, signature FROM verified_files WHERE uri=?",
                                (uri,)).fetchall()
        return {row["rel"]: row["signature"] for row in rows}

    def save_signatures(self, uri: str, signatures: dict[str, str]) -> None:
        with self._transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO verified_files (uri, rel, signature) VALUES (?, ?, ?)",
                [(uri, rel, sig) for rel, sig in signatures.items()])

    def consumers_of(self, uri: str) -> list[Execution]:
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT e.* FROM executions e JOIN events ev ON ev.execution_id = e.id "
                "JOIN artifacts a ON a.id = ev.artifact_id WHERE a.uri=? AND ev.kind='input' "
                "ORDER BY e.id", (uri,)).fetchall()
        return [self._execution(row) for row in rows]
