"""Choosing a tf.distribute strategy, the way the seed's distribution_utils did."""

from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import json
import os
import socket
import subprocess
import sys
import urllib.parse
from collections.abc import Sequence

import tensorflow as tf

STRATEGIES = ("default", "off", "one_device", "mirrored", "multi_worker_mirrored", "tpu")
_CONNECT_SECONDS = 10.0  # How long a --tpu grpc:// address may take to accept a connection.


# What TF_CONFIG calls the replicas of Vertex AI's worker pools: pool 0 is the chief (as aiplatform's own
# tf_profiler takes "workerpool0" for it), pool 1 the workers; this trainer plays no other role.
_VERTEX_ROLES = {"workerpool0": ("chief", "master"), "workerpool1": ("worker",)}


def _vertex_cluster() -> dict | None:
    """$CLUSTER_SPEC, Vertex AI's own account of the job's replicas, as a dict; None when unset.

    Raises:
      ValueError: it is not a JSON object whose `cluster` maps worker pools to lists of addresses.
    """
    text = os.environ.get("CLUSTER_SPEC")
    if not text:
        return None
    try:
        spec = json.loads(text)
        well_formed = isinstance(spec["cluster"], dict) and isinstance(spec.get("task", {}), dict) and all(
            isinstance(addresses, list) for addresses in spec["cluster"].values())
    except (ValueError, KeyError, TypeError):
        well_formed = False
    if not well_formed:
        raise ValueError(f"$CLUSTER_SPEC: expected Vertex AI's JSON object whose 'cluster' lists each worker pool's "
                         f"addresses, found {text[:200]}")
    return spec


def cluster_spec() -> dict:
    """TF_CONFIG as a dict (empty when unset), as Vertex AI sets it for each replica.

    Raises:
      ValueError: TF_CONFIG is not a JSON object whose `cluster` and `task`, when present, are objects naming a
        chief and workers this trainer can play, or it disagrees with Vertex AI's $CLUSTER_SPEC.
    """
    text = os.environ.get("TF_CONFIG") or "{}"
    vertex = _vertex_cluster()
    if text == "{}" and vertex:
        # Vertex AI sets both; Vertex's own form alone would leave every replica training alone as the chief,
        # all writing the same model_dir.
        replicas = sum(map(len, vertex["cluster"].values()))
        if replicas > 1:
            raise ValueError(f"$TF_CONFIG: expected the cluster TensorFlow reads (Vertex AI sets it beside "
                             f"$CLUSTER_SPEC), found it unset while $CLUSTER_SPEC names {replicas} replicas; "
                             "each would train alone")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"$TF_CONFIG: expected a JSON object, found text that does not parse ({e})") from None
    if not isinstance(config, dict) or not all(isinstance(config.get(k, {}), dict) for k in ("cluster", "task")):
        raise ValueError(f"$TF_CONFIG: expected a JSON object with 'cluster' and 'task' objects, found {text[:200]}")
    cluster, task = config.get("cluster", {}), config.get("task", {})
    if task and not cluster:
        raise ValueError(f"$TF_CONFIG: expected a 'cluster' of host:port addresses beside its 'task', found none "
                         f"in {text[:200]}")
    if cluster or task:
        # The roles this trainer plays: a chief and workers (MultiWorkerMirroredStrategy). Anything else would
        # train alone, or as a non-chief that writes nothing, and still exit 0.
        roles = sorted(set(cluster) - {"chief", "master", "worker"})
        if roles:
            raise ValueError(f"$TF_CONFIG: expected a cluster of 'chief' and 'worker' tasks, found {', '.join(roles)}")
        if "master" in cluster and sum(map(len, cluster.values())) > 1:  # Alone, an old name of the chief.
            raise ValueError("$TF_CONFIG: expected 'chief' for the first task of a multi-worker cluster "
                             "(MultiWorkerMirroredStrategy takes no 'master'), found master")
        for job, addresses in cluster.items():
            # A bare "host:port" counted its characters as tasks: MultiWorkerMirroredStrategy for one task, and
            # TensorFlow's traceback.
            if not (isinstance(addresses, list) and addresses and all(isinstance(a, str) for a in addresses)):
                raise ValueError(f"$TF_CONFIG: expected each job of 'cluster' to be a list of host:port addresses, "
                                 f"found {job}: {json.dumps(addresses)[:200]}")
        if len(cluster.get("chief", [])) > 1:  # Two would both write the outputs; TensorFlow refuses it in C++.
            raise ValueError(f"$TF_CONFIG: expected one 'chief' task, found {len(cluster['chief'])} "
                             f"({', '.join(cluster['chief'])[:200]}); list the others as 'worker'")
        task_type, index = task.get("type"), task.get("index", 0)
        if task_type not in cluster or type(index) is not int or not 0 <= index < len(cluster[task_type]):
            raise ValueError(f"$TF_CONFIG: expected a task that names one of the cluster's tasks "
                             f"({', '.join(f'{k} 0-{len(v) - 1}' for k, v in cluster.items())}), found {task}")
        if vertex:
            _check_agrees_with_vertex(cluster, task, vertex)
    return config


def _check_agrees_with_vertex(cluster: dict, task: dict, vertex: dict) -> None:
    """Raises ValueError where TF_CONFIG (a valid one) and Vertex AI's $CLUSTER_SPEC describe different jobs.

    Vertex AI writes them together; they part when something in the container rewrites one (an entrypoint that
    sets TF_CONFIG by hand): replicas then take roles Vertex did not give them (two chiefs writing one
    model_dir, or a worker whose peers never come).
    """
    replicas, tasks = sum(map(len, vertex["cluster"].values())), sum(map(len, cluster.values()))
    if replicas != tasks:
        raise ValueError(f"$TF_CONFIG: expected the {replicas} replicas $CLUSTER_SPEC names, found {tasks} tasks; "
                         "leave TF_CONFIG as Vertex AI sets it")
    pool, pool_index = vertex.get("task", {}).get("type"), vertex.get("task", {}).get("index", 0)
    roles = _VERTEX_ROLES.get(pool)
    if roles and (task.get("type") not in roles or task.get("index", 0) != pool_index):
        raise ValueError(f"$TF_CONFIG: expected the task $CLUSTER_SPEC names ({pool} {pool_index}, which TensorFlow "
                         f"calls {roles[0]} {pool_index}), found {task}; leave TF_CONFIG as Vertex AI sets it")


def is_chief() -> bool:
    """Whether this process writes the final outputs: the chief, or worker 0 when there is no chief."""
    config = cluster_spec()
    task = config.get("task", {})
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type in (None, "chief", "master"):
        return True
    return task_type == "worker" and index == 0 and "chief" not in config.get("cluster", {})


# The watchdog of _ended_unless_done_in: a separate process, since the wait it bounds holds the GIL. It says why,
# removes what the parent would have removed on failing (the parent is stuck inside TensorFlow, writing nothing),
# then ends the parent.
_WATCHDOG = ("import os, signal, sys, time\n"
             "parent, seconds, line, leftovers = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4:]\n"
             "time.sleep(seconds)\n"
             "if os.getppid() == parent:  # Still waiting (an ended parent's pid may belong to another process).\n"
             "    sys.stderr.write(line + '\\n'); sys.stderr.flush()\n"
             "    for path in leftovers:\n"
             "        try:\n"
             "            os.rmdir(path) if os.path.isdir(path) else os.remove(path)\n"
             "        except OSError:  # Gone, or a directory something was written to: it stays.\n"
             "            pass\n"
             "    os.kill(parent, signal.SIGKILL)\n")
# How long after the watchdog's SIGKILL this process ends itself, where that SIGKILL cannot end it.
_SELF_EXIT_GRACE_SECONDS = 5.0


@contextlib.contextmanager
def _ended_unless_done_in(seconds: float | None, message: str, leftovers: Sequence[str] = ()):
    """Ends this process with `message` on stderr unless the block is done within `seconds`.

    For a wait inside TensorFlow's C++ that holds the GIL: no Python thread or signal handler runs until it
    returns, and TensorFlow's preemption notifier swallows SIGTERM. None: no bound. `leftovers`: files, and
    directories removed only when empty, that the block's failure would have removed (this process's lock
    files and the directories it made), in that order; the watchdog removes them before it ends this process.

    A watchdog process ends it with SIGKILL. Where this process is its PID namespace's first (a container
    started without an init, `docker run IMAGE mnist-train ...`), the kernel drops a SIGKILL sent from inside the
    namespace; there faulthandler's timer thread, which runs without the GIL, ends it (exit 1) 5 s later.
    """
    if seconds is None:
        yield
        return
    from mnistkit.commands.cli import prog_name  # The command's name, as its error lines begin.

    watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(seconds),
                                 f"{prog_name()}: error: {message}", *leftovers], stdin=subprocess.DEVNULL)
    with open(os.devnull, "w") as nowhere:  # Its thread dumps every thread's stack first: not for the user.
        faulthandler.dump_traceback_later(seconds + _SELF_EXIT_GRACE_SECONDS, exit=True, file=nowhere)
        try:
            yield
        finally:
            faulthandler.cancel_dump_traceback_later()
            watchdog.kill()
            watchdog.wait()


def _training_tasks() -> int:
    """The chief and worker tasks TF_CONFIG names (0 when unset)."""
    cluster = cluster_spec().get("cluster", {})
    return sum(len(v) for k, v in cluster.items() if k in ("chief", "worker"))


def get_strategy(distribution_strategy: str = "default", num_gpus: int | None = None,
                 tpu: str | None = None, collective_timeout_seconds: float | None = None
                 ) -> tf.distribute.Strategy:
    """Returns the strategy asked for.

    Args:
      distribution_strategy: one of STRATEGIES. 'default' picks TPU when `tpu`
        is set, multi-worker when TF_CONFIG names several workers, mirrored for
        several GPUs, otherwise no distribution ('off').
      num_gpus: GPUs to use; None means all that are visible.
      tpu: a TPU name or address for the cluster resolver, or 'local' on a TPU VM.
      collective_timeout_seconds: multi-worker only: how long a collective may
        wait for a peer before the run fails instead of hanging.
    """
    if distribution_strategy not in STRATEGIES:
        raise ValueError(f"distribution_strategy: expected one of {', '.join(STRATEGIES)}, "
                         f"found {distribution_strategy!r}")
    gpus = tf.config.list_physical_devices("GPU")
    num_gpus = len(gpus) if num_gpus is None else num_gpus
    if num_gpus > len(gpus):
        raise ValueError(f"num_gpus: expected at most the {len(gpus)} GPUs visible, found {num_gpus}")
    if distribution_strategy in ("off", "one_device", "mirrored") and (tasks := _training_tasks()) > 1:
        # Each task would train alone on all the data; a non-chief then exits 0 having written nothing.
        raise ValueError(f"distribution_strategy: expected default or multi_worker_mirrored where $TF_CONFIG names "
                         f"{tasks} tasks, found {distribution_strategy!r}, which would train each task alone")
    if distribution_strategy == "default":
        if tpu:
            distribution_strategy = "tpu"
        elif _training_tasks() > 1:
            distribution_strategy = "multi_worker_mirrored"
        elif num_gpus > 1:
            distribution_strategy = "mirrored"
        else:
            # One device: the default strategy places ops there anyway, and it
            # measured faster than OneDeviceStrategy.
            distribution_strategy = "off"

    if distribution_strategy == "off":
        return tf.distribute.get_strategy()
    if distribution_strategy == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if num_gpus else "/cpu:0")
    if distribution_strategy == "mirrored":
        devices = [f"/gpu:{i}" for i in range(num_gpus)] or ["/cpu:0"]
        return tf.distribute.MirroredStrategy(devices)
    if distribution_strategy == "multi_worker_mirrored":
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=collective_timeout_seconds)
        # Creating the strategy waits for every task of the cluster to start, with no bound of its own: a peer
        # that never comes up would leave this one waiting forever (and TensorFlow's preemption notifier keeps
        # SIGTERM from ending it). Twice the collective timeout leaves room for a slower image pull.
        startup = 2 * collective_timeout_seconds if collective_timeout_seconds else None
        peers = ", ".join(f"{k} {i} ({a})" for k, v in cluster_spec()["cluster"].items() for i, a in enumerate(v))
        message = (f"multi-worker training could not start: not every task of the cluster ($TF_CONFIG: {peers}) "
                   f"answered within {startup:g} s (twice --collective_timeout_seconds); start every task, or check "
                   f"that each reaches the others' addresses") if startup else ""
        with _ended_unless_done_in(startup, message):
            return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    if not tpu:
        raise ValueError("tpu: expected a TPU name, address or 'local' for distribution_strategy=tpu, found none")
    return _tpu_strategy(tpu, 2 * collective_timeout_seconds if collective_timeout_seconds else None)


def _tpu_strategy(tpu: str, bound: float | None) -> tf.distribute.TPUStrategy:
    """TPUStrategy on the TPU `tpu` names, or one line saying why not: ended within `bound` seconds.

    A TPU job started where no TPU answers (compiled for a machine without TPUs, a wrong name or address) would
    otherwise end in a long TensorFlow traceback after download and validation already ran, or, given a grpc://
    address, wait forever: TensorFlow retries the connection with no bound, holding the GIL.
    """
    refused = f"--tpu {tpu}: expected a TPU this machine can reach, found none"
    remedy = "leave --tpu unset to train on the CPU or GPUs"
    address = urllib.parse.urlsplit(tpu) if tpu.startswith("grpc://") else None
    if address:
        try:
            host, port = address.hostname, address.port
        except ValueError:  # A port that is not a number (or out of range).
            host, port = address.hostname, None
        if not host or not port:
            raise ValueError(f"--tpu {tpu}: expected grpc://HOST:PORT, a TPU name or 'local', found no "
                             f"{'host' if not host else 'port number'} in it")
        try:  # Nothing listening is told in a moment; TensorFlow would wait for it for good.
            socket.create_connection((host, port), timeout=_CONNECT_SECONDS).close()
        except OSError as e:
            raise ValueError(f"{refused} (nothing answers at {host}:{port}: {e.strerror or e}); {remedy}") from None
    within = f" within {bound:g} s (twice --collective_timeout_seconds)" if bound else ""
    check = "that the address is a TPU worker's (port 8470)" if address else "the TPU's name and that it is ready"
    with _ended_unless_done_in(bound, f"{refused} that answered{within}; check {check}, or {remedy}"):
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, RuntimeError, OSError, tf.errors.OpError) as e:  # OSError: a name no one answers.
            raise ValueError(f"{refused} ({str(e).strip().splitlines()[0][:200]}); {remedy}") from e
        return tf.distribute.TPUStrategy(resolver)


def replicas_set_up_within(strategy: tf.distribute.Strategy, collective_timeout_seconds: float | None,
                           leftovers: Sequence[str] = ()):
    """Bounds, for a multi-worker run, the set-up up to the first broadcast of the model's weights.

    That broadcast waits for every replica with no timeout of its own, holding the GIL: a peer stuck before it
    (reading its data from a hung mount) left the others waiting for good. Twice the collective timeout, as
    for the strategy's start-up; elsewhere, or with no timeout, nothing is bounded. `leftovers`: what to
    remove if the bound ends the process (see _ended_unless_done_in).
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or not collective_timeout_seconds:
        return contextlib.nullcontext()
    bound = 2 * collective_timeout_seconds
    return _ended_unless_done_in(bound, f"multi-worker training could not start: the replicas did not all read "
                                        f"their data and set up the model within {bound:g} s (twice "
                                        "--collective_timeout_seconds); a task is stuck or gone: restart every task",
                                 leftovers)


def check_replicas_agree(strategy: tf.distribute.Strategy, facts: dict[str, object]) -> None:
    """Raises ValueError naming the facts in which the replicas of a multi-worker run differ.

    Replicas that differ train on together without a word: another --seed
    leaves part of the data unseen, other data or another checkpoint to
    resume from (a --model_dir that is not shared) average gradients of
    different models; the chief then writes a worse model and exits 0. Each
    replica hashes its `facts` (name -> any value with a stable repr) and all
    gather them, so every replica refuses alike, in one line.
    """
    names = sorted(facts)
    mine = tf.constant([[int.from_bytes(hashlib.sha256(repr(facts[n]).encode()).digest()[:8], "big", signed=True)
                         for n in names]], tf.int64)
    gathered = tf.function(lambda: strategy.gather(strategy.run(lambda: mine), axis=0))().numpy()
    differ = [name for i, name in enumerate(names) if len(set(gathered[:, i].tolist())) > 1]
    if differ:
        raise ValueError(f"multi-worker training: expected every replica to train with the same settings, data and "
                         f"checkpoint, found them differing in {', '.join(differ)}; give every task the same flags "
                         "and data, and a --model_dir or --checkpoint_dir they share")
