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


def local_cluster(workers: int, **kwargs: Any) -> Any:
    """A Dask LocalCluster of `workers` processes, one thread each, on 127.0.0.1 only, without a dashboard
    (`kwargs`: more LocalCluster arguments, e.g. ``env``).

    Dask's scheduler serves HTTP (health, metrics) even without a dashboard: ``dashboard_address=None`` only
    means its default port, 8787, where a second cluster (another run, a test beside it) warned "Port 8787 is
    already in use" and moved. Here it listens on a free port of 127.0.0.1, with no dashboard pages."""
    distributed = need_distributed()
    return distributed.LocalCluster(
        host="127.0.0.1",
        n_workers=int(workers),
        threads_per_worker=1,
        processes=True,
        dashboard_address="127.0.0.1:0",
        scheduler_kwargs={"dashboard": False},
        **kwargs,
    )


@contextmanager
def dask_client(workers: int | None = None, address: str | None = None, client: Any = None) -> Iterator[Any]:
    """A client: `client` as given, one connected to `address`, or a local cluster of `workers` processes
    (:func:`local_cluster`); what is opened here is closed here."""
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
    cluster = local_cluster(int(workers or 1))
    own_client = distributed.Client(cluster)
    try:
        yield own_client
    finally:
        own_client.close()
        cluster.close()
