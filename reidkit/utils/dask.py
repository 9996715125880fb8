"""Dask distributed for `--workers N` (a local cluster on 127.0.0.1) and `--cluster ADDRESS` (a running
scheduler): one place that imports it, names the extra when it is missing, and opens the client."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from reidkit.errors import OptionError


def need_distributed() -> Any:
    """The `distributed` module, or one error naming the extra."""
    from reidkit.utils.extras import require

    return require("distributed", "running on several workers or a cluster")


def check_cluster_args(workers: int | None, address: str | None) -> None:
    """One clear error for a bad workers / cluster address pair."""
    if workers is not None and int(workers) < 1:
        raise OptionError("workers", f"must be >= 1, got {workers}")
    if workers is not None and address is not None:
        raise OptionError("cluster", "give workers (a local cluster) or a cluster address, not both")


@contextmanager
def dask_client(workers: int | None = None, address: str | None = None, client: Any = None) -> Iterator[Any]:
    """A client: `client` as given, one connected to `address`, or a local cluster of `workers` processes
    (one thread each, listening on 127.0.0.1 only, no dashboard); what is opened here is closed here."""
    check_cluster_args(workers, address)
    if client is not None:
        yield client
        return
    distributed = need_distributed()
    if address is not None:
        own_client = distributed.Client(address)
        try:
            yield own_client
        finally:
            own_client.close()
        return
    cluster = distributed.LocalCluster(
        host="127.0.0.1", n_workers=int(workers or 1), threads_per_worker=1, processes=True, dashboard_address=None
    )
    own_client = distributed.Client(cluster)
    try:
        yield own_client
    finally:
        own_client.close()
        cluster.close()
