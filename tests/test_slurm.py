"""The cluster path on a real Slurm: every way a job ends, against slurmctld and slurmd.

The cluster (tests/slurm/cluster.sh) has a head host and two compute hosts, partitions ``main``
(default, MaxTime 8 h, preemptible) and ``high`` (preempts ``main`` in requeue mode), KillWait
30 s, and no accounting (no sacct). Jobs are submitted with ``semisup-submit --cluster slurm``
from the head host, as from a login node. Every training run is the same tiny demo run, so every
interrupted run must end with the weights of the uninterrupted one.

The scenarios run at once (each in a thread that submits, signals and waits as a user would), so
that the cluster's waits overlap; the tests then read what each saw. Jobs stay on the first
compute node, except the preempted one (the second, which the preempting job then asks for
whole) and the two-node run (after the preemption is over).
"""
import json
import os
import re
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.slurm_harness import job_logs, signal_while_held, submit_and_hold, submitted_ids, wait_for_step

pytestmark = pytest.mark.slurm

STEPS = 16
TINY = ["--labeled-fraction", "0.1", "--epochs", "1", "--batch-labeled", "32", "--batch-unlabeled", "32",
        "--max-eval-images", "32", "--gallery", "0", "--workers", "0", "--log-every", "1", "--checkpoint-every", "4",
        "--max-steps", str(STEPS)]
FIRST, SECOND = "semisup-c1", "semisup-c2"
SIGNALS = ["scancel --signal=TERM", "scontrol requeue", "preemption", "scancel --signal=USR2"]


def digest(run_dir: Path) -> str:
    return json.loads((run_dir / "final.json").read_text())["weights_sha256"]


def table_rows(text: str) -> list[dict[str, str]]:
    """The rows of semisup-status's table (pandas' right-aligned columns), by column name."""
    lines = text.splitlines()
    header, rows, edges = lines[0], [], []
    for match in re.finditer(r"\S+", header):
        edges.append((match.group(), match.end()))
    for line in lines[1:]:
        if not line.strip():
            break
        starts = [0] + [end for _, end in edges[:-1]]
        rows.append({name: line[start:end].strip() for (name, end), start in zip(edges, starts)})
    return rows


def one_line_error(proc) -> str:
    """The single 'error: ...' line a refused command prints (and nothing else on stderr)."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (proc.returncode, proc.stderr)
    return lines[0]


class Work:
    """A submitting user's folder: jobs/logs and runs/ under it, the demo cache shared."""

    def __init__(self, slurm, root: Path, demo_cache: str):
        self.slurm, self.root, self.cache = slurm, root, demo_cache
        self.logs, self.runs = root / "logs", root / "runs"

    def common(self, *extra: str, node: str | None = FIRST) -> list[str]:
        where = ["--sbatch", f"nodelist={node}"] if node else []
        return ["--cluster", "slurm", "--cpus-per-task", "1", "--log-dir", str(self.logs), "--run-root",
                str(self.runs), *where, *extra]

    def submit(self, name: str, *options: str, flags: list[str] | None = None, node: str | None = FIRST,
               check: bool = True):
        run_flags = (flags or TINY) + ["--demo-cache", self.cache]
        return self.slurm.submit(*self.common("--name", name, *options, node=node), "--", *run_flags, cwd=self.root,
                                 check=check)

    def submit_one(self, name: str, *options: str, **kwargs) -> str:
        (job,) = submitted_ids(self.submit(name, *options, **kwargs).stdout)
        return job

    def log(self, name: str) -> str:
        return (self.runs / name / "train.log").read_text()

    def explain(self, job: str) -> str:
        return job_logs(self.logs, job) + "\n" + self.slurm.logs()


# ---- the scenarios: each returns what it saw --------------------------------------------------
def sweep_then_requeue_the_finished_run(work: Work) -> dict:
    """A two-point sweep (seeds 0 and 1): preview, submission, status; then the finished seed-1 job
    requeued by hand."""
    spec = work.root / "pair.yaml"
    spec.write_text(yaml.safe_dump(dict(name="pair", base=TINY + ["--demo-cache", work.cache], grid=dict(seed=[0, 1]))))
    args = work.common("--partition", "main", "--sweep", str(spec))
    preview = work.slurm.submit(*args, "--dry-run", cwd=work.root)
    submitted = work.slurm.submit(*args, cwd=work.root)
    jobs = submitted_ids(submitted.stdout)
    states = work.slurm.wait_ended(jobs)
    seen = dict(preview=preview.stdout, submitted=submitted, jobs=jobs, states=states,
                status=work.slurm.status(work.runs / "pair"), scripts=sorted(work.logs.glob("*/*_submission.sh")))
    final = work.runs / "pair" / "seed1" / "final.json"
    seen["final_before"] = final.read_bytes()
    work.slurm.run("scontrol", "requeue", jobs[1])
    seen["requeued_states"] = work.slurm.wait_ended([jobs[1]], restarts=1)
    seen["final_after"] = final.read_bytes()
    seen["requeued_status"] = work.slurm.status(final.parent)
    return seen


def stop_by(work: Work, how: str, done: threading.Event) -> dict:
    """A run stopped by ``how`` at step 3 or later, which Slurm (or submitit) then resumes."""
    name = "signal-" + re.sub(r"[^a-z0-9]+", "-", how).strip("-")
    node = SECOND if how == "preemption" else FIRST
    # The preempted run loads with a worker process: Slurm signals it too, and it must not end the run.
    flags = TINY + (["--workers", "1"] if how == "preemption" else [])
    try:
        job, pid = submit_and_hold(work.runs / name, 3, lambda: work.submit_one(name, node=node, flags=flags))

        def send():
            if how == "preemption":
                work.slurm.run("sbatch", "-p", "high", "-w", node, "--exclusive", "-o", "/dev/null", "--wrap",
                               "sleep 1")
            elif how == "scontrol requeue":
                work.slurm.run("scontrol", "requeue", job)
            else:
                work.slurm.run(*how.split(), job)
        signal_while_held(pid, send, (signal.SIGTERM, signal.SIGUSR2))
        states = work.slurm.wait_ended([job], restarts=1)
        return dict(name=name, job=job, states=states, restarts=int(work.slurm.job(job).get("Restarts", 0)))
    finally:
        done.set()


def cancel_then_resubmit(work: Work) -> dict:
    job, pid = submit_and_hold(work.runs / "cancelled", 3, lambda: work.submit_one("cancelled"))
    signal_while_held(pid, lambda: work.slurm.run("scancel", job), (signal.SIGTERM,))
    seen = dict(job=job, states=work.slurm.wait_ended([job]), status=work.slurm.status(work.runs / "cancelled"))
    again = work.submit_one("cancelled")
    return dict(seen, again=again, again_states=work.slurm.wait_ended([again]))


def a_live_job_is_respected(work: Work) -> dict:
    """A second submission into the folder of a running job; then the running one cancelled."""
    job = work.submit_one("held", flags=TINY + ["--epochs", "30", "--max-steps", "100000"])
    wait_for_step(work.runs / "held", 2)
    refused = work.submit("held", check=False)
    work.slurm.run("scancel", job)
    return dict(job=job, refused=refused, states=work.slurm.wait_ended([job]),
                status=work.slurm.status(work.runs / "held"))


def kill_then_resubmit(work: Work, after: threading.Event) -> dict:
    """The task killed as a node crash kills it (no handler runs, its lock stays), then resubmitted
    to the other node (once the preemption there is over), whose view of the lock is Slurm's."""
    run_dir = work.runs / "killed"
    job, pid = submit_and_hold(run_dir, 5, lambda: work.submit_one("killed"))  # past the checkpoint of step 4
    holder = json.loads((run_dir / ".lock").read_text())
    os.kill(pid, signal.SIGKILL)
    states = work.slurm.wait_ended([job])
    left = json.loads((run_dir / ".lock").read_text())
    after.wait()
    again = work.submit_one("killed", node=SECOND)
    return dict(job=job, states=states, holder=holder, left=left, again=again,
                again_states=work.slurm.wait_ended([again]))


def two_layouts_of_two_processes(work: Work, after: threading.Event) -> dict:
    after.wait()  # both nodes free of the preemption
    flags = TINY + ["--max-steps", "6"]
    spread = work.submit_one("two-nodes", "--nodes", "2", flags=flags, node=None)
    packed = work.submit_one("two-tasks", "--tasks-per-node", "2", flags=flags)
    return dict(spread=spread, packed=packed, states=work.slurm.wait_ended([spread, packed]))


@pytest.fixture(scope="module")
def work(slurm, tmp_path_factory, demo_cache):
    return Work(slurm, tmp_path_factory.mktemp("user"), demo_cache)


@pytest.fixture(scope="module")
def seen(work):
    """Every scenario, run at once; {name: what it returned, or the exception it raised}."""
    preempted = threading.Event()
    scenarios = {
        "sweep": lambda: sweep_then_requeue_the_finished_run(work),
        **{how: (lambda how=how: stop_by(work, how, preempted if how == "preemption" else threading.Event()))
           for how in SIGNALS},
        "cancel": lambda: cancel_then_resubmit(work),
        "held": lambda: a_live_job_is_respected(work),
        "killed": lambda: kill_then_resubmit(work, preempted),
        "layouts": lambda: two_layouts_of_two_processes(work, preempted),
    }
    with ThreadPoolExecutor(len(scenarios)) as pool:
        futures = {name: pool.submit(run) for name, run in scenarios.items()}
    return {name: (future.exception() or future.result()) for name, future in futures.items()}


def outcome(seen: dict, name: str) -> dict:
    if isinstance(seen[name], BaseException):
        raise seen[name]
    return seen[name]


# ---- refused before queueing ---------------------------------------------------------------------
@pytest.mark.parametrize("options, message", [
    (["--partition", "gpu"], "--partition gpu: no such partition on this cluster (partitions: high, main)"),
    (["--cpus-per-task", "9"], "9 CPUs per task x 1 task(s) per node = 9 CPUs: the nodes of partition main have at most 8"),
    (["--timeout-min", "600"], "--timeout-min 600 min exceeds partition main's MaxTime of 480 min"),
    (["--gpus-per-node", "1"], "--gpus-per-node 1: no node of partition main has 1 GPU(s) (most: 0, no gres/gpu"),
    (["--nodes", "3"], "--nodes 3: partition main has 2 node(s) that fit this job"),
    (["--sbatch", "reservation=none"], "sbatch refused the job: sbatch: error:"),
])
@pytest.mark.slow
def test_a_job_that_can_never_start_is_refused_in_one_line_before_queueing(work, options, message):
    before = work.slurm.run("squeue", "-h", "-t", "all", "-o", "%i").stdout
    logs = work.root / "refused-logs"
    proc = work.slurm.submit("--cluster", "slurm", "--log-dir", str(logs), "--run-root", str(work.root / "refused"),
                             "--name", "refused", *options, "--", *TINY, "--demo-cache", work.cache,
                             cwd=work.root, check=False)
    assert message in one_line_error(proc)
    assert not logs.exists() or not any(logs.iterdir())  # no pickles, no script, no snapshot left
    assert work.slurm.run("squeue", "-h", "-t", "all", "-o", "%i").stdout == before  # nothing queued


@pytest.mark.slow
def test_cpus_and_time_default_to_what_the_partition_has(work):
    preview = work.slurm.submit("--cluster", "slurm", "--log-dir", str(work.logs), "--run-root", str(work.runs),
                                "--name", "defaults", "--dry-run", "--", *TINY, "--demo-cache", work.cache,
                                "--workers", "4", cwd=work.root).stdout
    # Without --cpus-per-node a task gets the node's 8 CPUs (not 2 x 4 workers + 2 = 10), and says why.
    assert "#SBATCH --cpus-per-task=8" in preview and "the 8 CPUs of partition main's nodes" in preview
    # A CPU job's default time limit is the partition's MaxTime (8 h), not a day; and it asks for no GPUs.
    assert "#SBATCH --time=480" in preview and "partition main's MaxTime" in preview
    assert "--gpus-per-node" not in preview


# ---- what the scenarios saw ----------------------------------------------------------------------
@pytest.mark.slow
def test_a_sweep_runs_to_completed_and_status_says_so_without_sacct(work, seen):
    sweep = outcome(seen, "sweep")
    assert list(sweep["states"].values()) == ["COMPLETED", "COMPLETED"], work.explain(sweep["jobs"][0])
    assert re.fullmatch(r"\d+_0 \d+_1", " ".join(sweep["jobs"]))  # one array
    table = sweep["status"]
    rows = table_rows(table)
    assert [r["run"] for r in rows] == ["seed0", "seed1"], table
    for row in rows:  # no sacct on this cluster: the controller answered
        assert row["state"].startswith("finished") and (row["scheduler"], row["source"]) == ("COMPLETED", "squeue"), table
    assert "sacct" not in sweep["submitted"].stderr + table


def test_the_preview_is_the_script_sbatch_received(work, seen):
    sweep = outcome(seen, "sweep")
    shown = sweep["preview"].split("as sbatch will receive it:\n", 1)[1].split("# (end of the sbatch script)\n", 1)[0]
    (script,) = [s for s in sweep["scripts"] if s.name.startswith(sweep["jobs"][0].split("_")[0] + "_")]
    assert shown == script.read_text()  # byte for byte
    assert "#SBATCH --array=0-1%2" in shown and "%A_%a_0_log.out" in shown


@pytest.mark.parametrize("how", SIGNALS)
def test_every_stop_signal_checkpoints_and_the_job_resumes_to_the_same_weights(work, seen, how):
    stopped = outcome(seen, how)
    job, name = stopped["job"], stopped["name"]
    assert stopped["states"] == {job: "COMPLETED"} and stopped["restarts"] >= 1, work.explain(job)
    log = work.log(name)
    signal_name = "SIGUSR2" if how.endswith("USR2") else "SIGTERM"
    at = re.search(rf"{signal_name} at step (\d+): checkpoint.pt written", log)
    resumed = re.search(r"resumed from .* at step (\d+)", log)
    assert at and resumed, work.explain(job)
    assert 3 <= int(at.group(1)) == int(resumed.group(1)) < STEPS  # nothing lost
    assert digest(work.runs / name) == digest(work.runs / "pair" / "seed0")  # ... and it ends as the uninterrupted run


def test_scancel_stops_with_a_checkpoint_and_the_same_command_resumes_it(work, seen):
    cancelled = outcome(seen, "cancel")
    job, again = cancelled["job"], cancelled["again"]
    assert cancelled["states"] == {job: "CANCELLED"}, work.explain(job)
    log = work.log("cancelled")
    step = int(re.search(r"SIGTERM at step (\d+): checkpoint.pt written", log).group(1))
    assert f"stopped by SIGTERM at step {step}" in cancelled["status"] and "CANCELLED" in cancelled["status"]
    assert cancelled["again_states"] == {again: "COMPLETED"}, work.explain(again)
    assert re.search(rf"resumed from .* at step {step}\b", log)  # no hand edit of the lock was needed
    assert digest(work.runs / "cancelled") == digest(work.runs / "pair" / "seed0")


def test_a_live_job_keeps_its_folder_and_a_stopped_run_shows_no_eta(work, seen):
    held = outcome(seen, "held")
    refused = one_line_error(held["refused"])
    assert "in use by another run" in refused and f"Slurm job {held['job']} is RUNNING" in refused
    assert held["states"] == {held["job"]: "CANCELLED"}
    (row,) = table_rows(held["status"])
    assert (row["state"], row["scheduler"]) == ("stopped", "CANCELLED"), held["status"]
    assert row.get("eta", "-") == "-", held["status"]


def test_a_killed_jobs_lock_is_taken_over_by_the_resubmitted_job(work, seen):
    killed = outcome(seen, "killed")
    assert killed["left"] == killed["holder"] and killed["holder"]["job"] == killed["job"]  # the lock outlived its job
    assert killed["again_states"] == {killed["again"]: "COMPLETED"}, work.explain(killed["again"])
    # Seen from the other node, Slurm says the holder is gone.
    assert re.search(rf"took over the run lock of a run that is gone \(pid \d+ on {FIRST}, Slurm job {killed['job']}, "
                     r"since [^)]*: Slurm job \S+ is (FAILED|CANCELLED|COMPLETED)\)", work.log("killed")), work.log("killed")
    assert digest(work.runs / "killed") == digest(work.runs / "pair" / "seed0")


def test_a_requeued_finished_run_is_a_no_op_that_reports_completed(work, seen):
    sweep = outcome(seen, "sweep")
    job = sweep["jobs"][1]
    assert sweep["requeued_states"] == {job: "COMPLETED"}, work.explain(job)
    assert sweep["final_after"] == sweep["final_before"]
    assert "finished under this job" in job_logs(work.logs, job)
    outcome_record = json.loads((work.runs / "pair" / "seed1" / "job-outcome.json").read_text())
    assert outcome_record["state"] == "COMPLETED" and outcome_record["job_id"] == job
    (row,) = table_rows(sweep["requeued_status"])
    assert row["state"].startswith("finished") and row["scheduler"] == "COMPLETED", sweep["requeued_status"]


def test_two_nodes_of_one_task_and_one_node_of_two_tasks_end_with_the_same_weights(work, seen):
    layouts = outcome(seen, "layouts")
    assert set(layouts["states"].values()) == {"COMPLETED"}, work.explain(layouts["spread"])
    assert "2 process(es) on cpu" in work.log("two-nodes") and "2 process(es) on cpu" in work.log("two-tasks")
    # One thread each: what the job asked per task (--cpus-per-task 1), not the machine's cores.
    assert "1 thread(s) per process: 1 CPU (affinity" in work.log("two-tasks") and "SLURM_CPUS_PER_TASK 1)" in work.log("two-tasks")
    assert digest(work.runs / "two-nodes") == digest(work.runs / "two-tasks")
