"""Ray backend: collection episodes and real-game evaluation episodes as Ray tasks (`pip install -e ".[ray]"`).

    python -m train.collect --backend ray [--address ADDR]      # CollectConfig.backend, .address
    evaluate_real(agent, model, episodes, backend="ray")          # train/evaluate.py, RealEvaluator

Collection. Each episode is one task (one CPU) running the pool workers' own code,
`train.collect.episode_shard`, with the episode's seeds (`episode_seeds`), so it makes the same
arrays; the task compresses them into the shard file's bytes (`dreamenv.shards.encode_shard`) and
returns them with the meta. The driver writes each shard atomically into --out and keeps the
manifest. Shards come back to the driver, rather than being written by workers to a shared path,
because then:
  - any cluster works: workers need no shared filesystem, mount or path in common with the driver;
  - one process writes the folder, so the resume rules are the pool's (the driver checks a shard
    with `train.collect.finished_meta` before submitting its episode) and no two writers race on a
    shard or on the manifest;
  - the price is small and measured: the worker does the compressing, the driver only moves bytes
    (about 1 MB per 1000-step shard) to disk; benchmarks/collect_speed.py projects when that binds.
At most --workers tasks are in flight (None: one per CPU in the cluster), so finished shards never
pile up in the object store. A task whose worker process dies (killed, out of memory, node lost) is
rerun up to --max-retries times (Ray's task `max_retries`; an episode is deterministic, so a rerun
makes the same shard), then its episode is reported in `CollectResult.failures`, as the pool reports
a dead worker. An exception raised by the episode is not retried (it would raise again): it is
reported with its traceback.

Files a task needs travel through the object store, never by path: an agent --policy file (its
bytes) and its --model bundle (loaded by the driver). Env, policy and world model are built once
per worker process and reused by its later tasks. On a cluster (--address) the driver also ships
this `train` package (runtime_env py_modules); the nodes need the project's dependencies installed
(the same image), and a `package.module:factory` policy must be importable there.

Evaluation. `RayEpisodes` runs real episodes (`train.evaluate.EpisodeRunner`) as tasks, the agent's
bytes and the world model shipped the same way; episode i is reset with seed + i as in the local
run, so the scores are the same.

Ray is imported only when asked (`import_ray`): without it, backend "ray" raises `RayMissing`,
before any work, saying how to install it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import tempfile
import uuid
from collections import deque
from pathlib import Path

from dreamenv.shards import encode_shard, shard_name, write_shard_bytes

INSTALL_HINT = 'pip install -e ".[ray]"'
TRAIN_PACKAGE = Path(__file__).resolve().parent


class RayMissing(ImportError):
    """Backend "ray" was asked for, but Ray is not installed."""


def import_ray():
    """The ray module; RayMissing (with the install command) when it cannot be imported."""
    try:
        import ray
    except ImportError as err:
        raise RayMissing(f"backend 'ray' needs Ray, which is not installed ({err}); "
                         f"install it with: {INSTALL_HINT}") from err
    return ray


@contextlib.contextmanager
def session(address: str | None = None):
    """Connected to Ray inside the block: to the instance this process already joined, else to the
    cluster at `address` (shipping this `train` package), else to a new local instance; one it
    started is shut down at the end."""
    ray = import_ray()
    started = not ray.is_initialized()
    if started and address is None:
        ray.init(include_dashboard=False)
    elif started:
        ray.init(address=address, runtime_env={"py_modules": [str(TRAIN_PACKAGE)]})
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def cluster_cpus(ray) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


@functools.cache
def _remote(fn, max_retries: int):
    """`fn` as a one-CPU Ray task, rerun up to `max_retries` times when its worker dies."""
    return import_ray().remote(num_cpus=1, max_retries=max_retries)(fn)


def map_tasks(ray, submit, items, limit: int, on_done) -> None:
    """submit(item) -> ObjectRef (or None: nothing to run) for each item, at most `limit` running;
    on_done(item, ref) as each finishes, in the order they finish."""
    todo, running = deque(items), {}
    try:
        while todo or running:
            while todo and len(running) < limit:
                item = todo.popleft()
                ref = submit(item)
                if ref is not None:
                    running[ref] = item
            if running:
                done, _ = ray.wait(list(running), num_returns=1)
                for ref in done:
                    on_done(running.pop(ref), ref)
    finally:
        for ref in running:  # an error or interrupt in the driver: stop what still runs
            ray.cancel(ref, force=True)


# ---- in the workers: files shipped by the driver, built objects cached per process ----

_CACHED: dict[str, tuple] = {}  # role -> (key, objects): the last env/policy or evaluation runner
_FILES = Path(tempfile.gettempdir()) / f"dreamenv-ray-{uuid.uuid4().hex[:8]}"


def _materialize(data: bytes, suffix: str) -> Path:
    """Shipped file bytes as a local file (named by content, so a changed agent is a new file)."""
    path = _FILES / f"{hashlib.sha256(data).hexdigest()[:20]}{suffix}"
    if not path.is_file():
        _FILES.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part")
        partial.write_bytes(data)
        partial.rename(path)
    return path


def _cached(role: str, key, build):
    if role not in _CACHED or _CACHED[role][0] != key:
        _CACHED.pop(role, None)
        _CACHED[role] = (key, build())
    return _CACHED[role][1]


def _collector(config, files: dict):
    """(env, policy) for `config` in this worker process, built on its first episode."""
    from train.collect import make_env
    from train.policies import make_policy

    def build():
        ray = import_ray()
        if config.is_agent:
            model = ray.get(files["model"][0]) if files["model"] else None
            policy = make_policy(str(_materialize(ray.get(files["agent"][0]), Path(config.policy).suffix)), model)
            policy.path = config.policy  # what its episodes record, as in the pool
        else:
            policy = make_policy(config.policy, config.model)
        return make_env(config.max_steps), policy

    key = (config.policy, config.model, config.max_steps, files["token"])
    return _cached("collect", key, build)


def _collect_task(config, episode: int, files: dict) -> tuple[bytes, dict]:
    """One episode in a worker -> (its shard file's bytes, its meta)."""
    from train.collect import episode_shard

    env, policy = _collector(config, files)
    arrays, meta = episode_shard(env, policy, config, episode)
    return encode_shard(arrays, meta, shard_name(episode)), meta


def _evaluate_task(model_box: list, token: str, max_steps, agent_box: list, suffix: str, seed: int) -> float:
    """One real episode of the shipped agent in a worker, reset with `seed` -> its return."""
    import jax

    from train.evaluate import EpisodeRunner

    ray = import_ray()

    def build():
        jax.config.update("jax_cpu_enable_async_dispatch", False)  # faster single-env stepping
        return EpisodeRunner(ray.get(model_box[0]) if model_box else None, max_steps)

    runner = _cached("evaluate", (token, max_steps), build)
    return float(runner(_materialize(ray.get(agent_box[0]), suffix), seed))


# ---- on the driver ----

def _ship_files(ray, config) -> dict:
    """The object-store copies of the files `config`'s policy reads (boxed: tasks fetch them once)."""
    files = {"token": uuid.uuid4().hex, "agent": None, "model": None}
    if config.is_agent:
        from dreamenv.checkpoint import load_bundle

        files["agent"] = [ray.put(Path(config.policy).read_bytes())]
        files["model"] = None if config.model is None else [ray.put(load_bundle(config.model))]
    return files


def run_episodes(config, episodes: list[int], on_outcome) -> None:
    """train.collect's `run_workers` on Ray: on_outcome(episode, ('ok', meta, skipped) or
    ('error', text)) for each episode, after its shard is written into config.out."""
    import traceback

    from train.collect import finished_meta

    with session(config.address) as ray:
        files = _ship_files(ray, config)
        task = _remote(_collect_task, config.max_retries)

        def submit(episode):
            try:
                existing = finished_meta(config.out / shard_name(episode), config.expected_meta(episode))
            except Exception:
                return on_outcome(episode, ("error", traceback.format_exc()))
            if existing is not None:
                return on_outcome(episode, ("ok", existing, True))
            return task.remote(config, episode, files)

        def done(episode, ref):
            try:
                data, meta = ray.get(ref)
            except ray.exceptions.RayTaskError as err:  # the episode raised: its traceback
                return on_outcome(episode, ("error", str(err)))
            except ray.exceptions.RayError as err:  # the worker (or its node) died, retries spent
                return on_outcome(episode, ("error", f"worker process died, {config.max_retries} "
                                                     f"retries spent ({type(err).__name__}: {err})"))
            write_shard_bytes(config.out / shard_name(episode), data)
            on_outcome(episode, ("ok", meta, False))

        map_tasks(ray, submit, episodes, config.workers or cluster_cpus(ray), done)


class RayEpisodes:
    """Real episodes of agents as Ray tasks: `train.evaluate.RealEvaluator(backend="ray")`.

    model: a bundle path, Bundle, WorldModel or None (the shipped one, loaded by the workers);
    workers: tasks in flight (0: one per cluster CPU). close() leaves a Ray instance it started.
    """

    def __init__(self, model=None, max_steps: int | None = None, workers: int = 0, address: str | None = None,
                 max_retries: int = 2):
        self._stack = contextlib.ExitStack()
        self.ray = self._stack.enter_context(session(address))
        try:
            if isinstance(model, (str, Path)):
                from dreamenv.checkpoint import load_bundle

                model = load_bundle(model)  # checked here, before any task
            self.model_box = [] if model is None else [self.ray.put(model)]
            self.token, self.max_steps = uuid.uuid4().hex, max_steps
            self.limit = workers or cluster_cpus(self.ray)
            self.task = _remote(_evaluate_task, max_retries)
        except BaseException:
            self._stack.close()
            raise

    def __call__(self, path, seeds: list[int]) -> list[float]:
        """Returns of episodes of the agent file at `path`, one per seed, in the seeds' order."""
        agent_box, suffix, returns = [self.ray.put(Path(path).read_bytes())], Path(path).suffix, {}

        def submit(i):
            return self.task.remote(self.model_box, self.token, self.max_steps, agent_box, suffix, seeds[i])

        def done(i, ref):
            returns[i] = float(self.ray.get(ref))

        map_tasks(self.ray, submit, range(len(seeds)), self.limit, done)
        return [returns[i] for i in range(len(seeds))]

    def close(self) -> None:
        self._stack.close()
