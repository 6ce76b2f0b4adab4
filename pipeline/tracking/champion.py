"""The champion rule of the model registry.

The registered model's alias ``champion`` (:data:`CHAMPION_ALIAS`) names the best version so
far: :func:`promote_champion` moves it only when a new version beats the champion on the same
comparison key (evaluation set + metric, tag ``champion.key``), so ``models:/NAME@champion``
is always the best model measured one way.

Two report stages deciding at once (queued DVC experiments) take turns: the decision (read
the alias, compare, move) runs under :func:`champion_lock`, a registry-side lock that works
for every store (sqlite, a server), so the last one to decide compares with the first one's
result and each says truthfully what it did.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

CHAMPION_ALIAS = "champion"
#: The lock of :func:`champion_lock`: a registered model named ``<model>`` + this suffix.
LOCK_SUFFIX = ".champion-lock"
#: How long a decision waits for the lock before giving up (a warning: alias not decided).
LOCK_WAIT_S = 180.0
#: A lock held by the same holder this long is stale (its process died mid-decision, which
#: takes well under a second otherwise) and is broken.
LOCK_STALE_S = 60.0


class ChampionWarning(UserWarning):
    """The champion alias could not be decided (versions measured differently): it stays."""


def champion_rule(tracking: Mapping[str, Any], sets: list[str]) -> tuple[str, str]:
    """``(set name, metric)`` the champion is chosen on, from params.yaml ``tracking``:
    ``champion_set`` (default: the first of ``evaluate.sets``) and ``champion_metric``
    (``pck@<alpha>``, per-image PCK; default ``pck@0.1``). ValueError naming the key when
    the set is not evaluated or the metric is not of that form."""
    metric = tracking.get("champion_metric") or "pck@0.1"
    try:  # one spelling per metric: pck@0.10 and pck@0.1 are the same comparison key
        metric = f"pck@{float(metric.removeprefix('pck@')):g}" if metric.startswith("pck@") else None
    except (AttributeError, ValueError):
        metric = None
    if metric is None:
        raise ValueError(
            f"params.yaml: tracking.champion_metric must be 'pck@<alpha>' (e.g. pck@0.1), "
            f"got {tracking.get('champion_metric')!r}"
        )
    name = tracking.get("champion_set") or (sets[0] if sets else None)
    if name not in sets:
        raise ValueError(f"params.yaml: tracking.champion_set {name!r} is not one of evaluate.sets {sets}")
    return name, metric


def metric_value(report: Mapping[str, Any], metric: str) -> float:
    """The value of ``pck@<alpha>`` in an evaluation report (per-image PCK, %)."""
    alpha = metric.removeprefix("pck@")
    per_image = report.get("per_image") or {}
    for key, value in per_image.items():
        if key == alpha or _same_number(key, alpha):
            return float(value)
    raise ValueError(f"tracking.champion_metric {metric!r}: the report has PCK at alphas {list(per_image)} only")


def _same_number(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return False


def champion_key(set_name: str, report: Mapping[str, Any], metric: str) -> str:
    """What makes two versions comparable: the evaluation set (name, data set, split, size,
    number of pairs) and the metric, e.g. ``test_160=embedded/test@160/n100:pck@0.1``."""
    return (
        f"{set_name}={report.get('dataset')}/{report.get('split')}@{report.get('resolution')}"
        f"/n{report.get('n_pairs')}:{metric}"
    )


def champion_measure(reports: Mapping[str, Mapping[str, Any]], rule: tuple[str, str]) -> tuple[str, float]:
    """``(champion.key, value)`` of the evaluation ``reports`` under ``rule`` (set, metric);
    the value is rounded as the tag stores it, so a re-read tag compares equal. ValueError
    when the set was not evaluated or lacks the metric."""
    set_name, metric = rule
    if set_name not in reports:
        raise ValueError(f"tracking.champion_set {set_name!r}: no evaluation report (have {sorted(reports)})")
    return champion_key(set_name, reports[set_name], metric), round(metric_value(reports[set_name], metric), 4)


@contextlib.contextmanager
def champion_lock(client: Any, name: str, wait_s: float = LOCK_WAIT_S, stale_s: float = LOCK_STALE_S) -> Iterator[None]:
    """Hold the champion lock of registered model ``name`` for the block.

    The lock is a registered model ``<name>.champion-lock`` that exists while held:
    creating a registered model whose name exists fails on every store (the name is the
    table's key), the one atomic test-and-set MLflow's API offers (tags and aliases are
    overwritten silently). Its tag ``holder`` (host, pid, a random token) tells a request
    that reached the server before a retry (ours already) from another holder's. A lock whose
    holder stays the same for ``stale_s`` seconds of waiting is broken; after ``wait_s``
    seconds :class:`TimeoutError` names the lock to delete by hand."""
    from mlflow.exceptions import MlflowException

    lock = f"{name}{LOCK_SUFFIX}"
    me = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    start = time.monotonic()
    seen: tuple[str | None, float] | None = None  # (holder, since when we see it)
    while True:
        try:
            client.create_registered_model(
                lock,
                tags={"holder": me},
                description=f"held while deciding the {CHAMPION_ALIAS!r} alias of {name}; deleted afterwards",
            )
            break
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        try:
            holder = client.get_registered_model(lock).tags.get("holder")
        except MlflowException:  # released between the two calls
            continue
        if holder == me:  # our create succeeded, its reply was lost and the retry collided
            break
        now = time.monotonic()
        if seen is None or seen[0] != holder:
            seen = (holder, now)
        elif now - seen[1] > stale_s:
            warnings.warn(
                f"registered model {name}: breaking the stale champion lock {lock!r} of {holder} "
                f"(held over {stale_s:.0f} s)",
                ChampionWarning,
                stacklevel=3,
            )
            with contextlib.suppress(MlflowException):
                client.delete_registered_model(lock)
            seen = None
            continue
        if now - start > wait_s:
            raise TimeoutError(
                f"registered model {name}: the champion lock {lock!r} is held by {holder} for over "
                f"{wait_s:.0f} s; delete that registered model if no report stage is running"
            )
        time.sleep(random.uniform(0.1, 0.4))
    try:
        yield
    finally:
        client.delete_registered_model(lock)


def promote_champion(
    client: Any, name: str, version: str, reports: Mapping[str, Mapping[str, Any]], rule: tuple[str, str]
) -> dict[str, Any]:
    """Tag version ``version`` of registered model ``name`` with its PCK and decide the alias.

    Tags: ``pck.<set>.<alpha>`` for every set and alpha, ``champion.key`` (what the value
    measures: :func:`champion_key`) and ``champion.value``. The alias ``champion`` moves to
    this version when there is none yet, or when the champion carries the same
    ``champion.key`` and a strictly lower ``champion.value``. Rule for a champion measured
    differently (another key, or no key: registered before these tags, or by a sweep): it
    stays, with a :class:`ChampionWarning` saying why; compare by hand and move it with
    ``MlflowClient().set_registered_model_alias(name, "champion", version)``.
    """
    key, value = champion_measure(reports, rule)
    for sname, rep in reports.items():
        for alpha, v in (rep.get("per_image") or {}).items():
            client.set_model_version_tag(name, version, f"pck.{sname}.{alpha}", f"{float(v):.4f}")
    client.set_model_version_tag(name, version, "champion.key", key)
    client.set_model_version_tag(name, version, "champion.value", f"{value:.4f}")
    with champion_lock(client, name):
        return _decide(client, name, version, key, value, rule)


def _decide(client: Any, name: str, version: str, key: str, value: float, rule: tuple[str, str]) -> dict[str, Any]:
    """The alias decision of :func:`promote_champion` (under the champion lock)."""
    # from the model's alias table: a missing alias is no error to tell from a failing server
    champ_version = client.get_registered_model(name).aliases.get(CHAMPION_ALIAS)
    champ = client.get_model_version(name, champ_version) if champ_version is not None else None
    out: dict[str, Any] = {
        "version": version,
        "key": key,
        "value": value,
        "champion_before": champ.version if champ is not None else None,
    }
    if champ is None:
        out["moved"], out["reason"] = True, "no champion yet"
    elif str(champ.version) == str(version):
        out["moved"], out["reason"] = False, "already the champion"
    elif champ.tags.get("champion.key") != key or "champion.value" not in champ.tags:
        out["moved"] = False
        out["reason"] = (
            f"the champion v{champ.version} was measured differently (champion.key "
            f"{champ.tags.get('champion.key', 'missing')!r}, this version: {key!r}): not compared"
        )
        warnings.warn(
            f"registered model {name}: alias {CHAMPION_ALIAS!r} stays on v{champ.version}: "
            f"{out['reason']}; move it by hand if v{version} is better "
            f"(MlflowClient().set_registered_model_alias({name!r}, {CHAMPION_ALIAS!r}, {version!r}))",
            ChampionWarning,
            stacklevel=3,
        )
    else:
        best = float(champ.tags["champion.value"])
        out["moved"] = value > best
        out["reason"] = f"{rule[1]} {value:.2f} {'>' if out['moved'] else '<='} champion v{champ.version}'s {best:.2f}"
    if out["moved"]:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    out["champion"] = version if out["moved"] else (champ.version if champ is not None else None)
    return out
