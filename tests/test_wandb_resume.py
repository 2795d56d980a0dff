"""One W&B run per run directory: every resume logs into the run that its directory started, offline too.

Offline, wandb writes each start into an `offline-run-*` folder of its own; the folders of one run share its id, and
`wandb sync` uploads the folders of one id into that run, one after the other in the order they were started: each
asks the server how far the run has got and appends to it. That upload goes to a stand-in of W&B's API on 127.0.0.1.
"""

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from minigpt.logger import RUN_ID_FILE
from tests import test_attention_maps
from tests.test_train import train
from tests.wandb_records import config_and_history, records

in_tmp = test_attention_maps.in_tmp  # the fixture: runs in a fresh temporary folder, W&B offline

# No attention maps: they are W&B tables, uploaded as artifacts, which the stand-in below does not take.
SHORT = ["--logger", "wandb", "--trainer.val_check_interval", "2", "--attention_maps.at_train_end", "false"]


class StandInWandb(BaseHTTPRequestHandler):
    """Just enough of W&B's API for `wandb sync` of finished runs without artifacts: GraphQL's RunResumeStatus (a run
    exists once history has reached it, and reports its rows), UpsertBucket, ServerFeaturesQuery and CreateRunFiles,
    and the file stream, whose history rows it keeps at the offsets they are sent to."""

    rows: dict[str, list[dict]] = {}  # run path (entity/project/id) -> its history rows
    upserted: list[str] = []  # the run ids UpsertBucket was asked for

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/graphql":
            request = json.loads(body)
            operation = request["query"].split("(")[0].split("{")[0].split()[-1]
            self.reply({"data": self.graphql(operation, request.get("variables") or {})})
        elif self.path.endswith("/file_stream"):
            run = self.path.removeprefix("/files/").removesuffix("/file_stream")
            if history := json.loads(body).get("files", {}).get("wandb-history.jsonl"):
                offset, lines = history["offset"], [json.loads(line) for line in history["content"]]
                self.rows.setdefault(run, [])[offset : offset + len(lines)] = lines
            self.reply({})
        else:  # wandb's own telemetry
            self.reply({})

    def graphql(self, operation: str, variables: dict) -> dict:
        name = variables.get("name")
        project = {"id": "p", "name": variables.get("project"), "entity": {"id": "e", "name": "me"}}
        if operation == "RunResumeStatus":
            rows = self.rows.get(f"me/{variables['project']}/{name}")
            bucket = None if not rows else {
                "id": name, "name": name, "displayName": name, "tags": [], "notes": None, "config": "{}",
                "summaryMetrics": json.dumps({"_step": rows[-1]["_step"]}), "historyLineCount": len(rows),
                "historyTail": "[]", "eventsLineCount": 0, "eventsTail": "[]", "logLineCount": 0,
                "wandbConfig": json.dumps({"t": {}}),  # W&B's mark of a run that has started
            }  # fmt: skip
            return {"model": project | {"bucket": bucket}}
        if operation == "UpsertBucket":
            self.upserted.append(name)
            bucket = {"id": name, "name": name, "displayName": name, "config": "{}", "historyLineCount": 0}
            return {"upsertBucket": {"bucket": bucket | {"project": project}, "inserted": True}}
        if operation == "ServerFeaturesQuery":
            return {"serverInfo": {"features": []}}
        if operation == "CreateRunFiles":  # no upload addresses: the files are not uploaded
            files = [{"name": file, "uploadUrl": None} for file in variables["files"]]
            return {"createRunFiles": {"runID": "r", "uploadHeaders": [], "files": files}}
        return {}

    def reply(self, body: dict):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def standin_wandb():
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandInWandb)
    StandInWandb.rows, StandInWandb.upserted = {}, []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def wandb_sync(base_url: str, home: Path, *paths: Path) -> None:
    home.mkdir()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    environment |= {"HOME": str(home), "WANDB_BASE_URL": base_url, "WANDB_API_KEY": "0123456789abcdef" * 2 + "01234567"}
    done = subprocess.run(
        [sys.executable, "-m", "wandb", "sync", *map(str, paths)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def starts(wandb_dir: Path) -> list[tuple[str, list[int]]]:
    """Each offline start under wandb_dir, in the order they started: its run id and the training steps it logged."""
    found = []
    for folder in wandb_dir.glob("offline-run-*"):
        _, history = config_and_history(folder)  # waits for the finished run file
        (run,) = [
            r.run for path in folder.glob("*.wandb") for r in records(path) if r.WhichOneof("record_type") == "run"
        ]
        steps = [row["trainer/global_step"] for row in history if "train/loss" in row]
        found.append((run.start_time.ToNanoseconds(), run.run_id, steps))
    return [(run_id, steps) for _, run_id, steps in sorted(found)]


@pytest.mark.slow
def test_resumes_log_into_the_run_the_directory_started_and_sync_as_one(in_tmp, standin_wandb):
    assert train("--name", "w", *SHORT, "--trainer.max_steps", "4") == 0
    wandb_dir = in_tmp / "runs" / "w" / "wandb"
    run_id = (wandb_dir / RUN_ID_FILE).read_text()
    for max_steps in ("8", "12"):
        assert train("--name", "w", *SHORT, "--ckpt_path", "last", "--trainer.max_steps", max_steps) == 0
        assert (wandb_dir / RUN_ID_FILE).read_text() == run_id

    logged = starts(wandb_dir)
    assert [run for run, _ in logged] == [run_id] * 3  # three starts, one run
    assert {path.name.split("-")[-1] for path in wandb_dir.glob("offline-run-*")} <= {run_id, "1", "2"}
    assert [steps for _, steps in logged] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]  # the steps continue

    # The line printed offline says to sync runs/w/wandb/offline-run-*: one run, its rows appended start after start.
    wandb_sync(standin_wandb, in_tmp / "home", *wandb_dir.glob("offline-run-*"))
    assert set(StandInWandb.upserted) == {run_id} and list(StandInWandb.rows) == [f"me/minigpt/{run_id}"]
    rows = StandInWandb.rows[f"me/minigpt/{run_id}"]
    assert [row["_step"] for row in rows] == list(range(len(rows)))
    assert [row["trainer/global_step"] for row in rows if "train/loss" in row] == list(range(12))


def test_a_fresh_run_is_a_new_wandb_run_in_a_new_or_a_reused_directory(in_tmp):
    assert train("--name", "a", *SHORT, "--trainer.max_steps", "2") == 0
    assert train("--name", "b", *SHORT, "--trainer.max_steps", "2") == 0
    first_a = (in_tmp / "runs/a/wandb" / RUN_ID_FILE).read_text()
    assert first_a != (in_tmp / "runs/b/wandb" / RUN_ID_FILE).read_text()

    # The same name without --ckpt_path trains from step 0 again: a run of its own, not a second pass over the first.
    assert train("--name", "a", *SHORT, "--trainer.max_steps", "2") == 0
    second_a = (in_tmp / "runs/a/wandb" / RUN_ID_FILE).read_text()
    assert second_a != first_a
    assert sorted(run for run, _ in starts(in_tmp / "runs/a/wandb")) == sorted([first_a, second_a])
