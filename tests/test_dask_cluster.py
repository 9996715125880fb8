"""reidkit.utils.dask.local_cluster: two local clusters at once, neither on Dask's default HTTP port 8787
(Dask's scheduler serves HTTP even with dashboard_address=None; the second one used to warn "Port 8787 is
already in use")."""

from __future__ import annotations

import urllib.error
import urllib.request
import warnings

import pytest


def _status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_two_local_clusters_at_once_leave_port_8787_alone():
    pytest.importorskip("distributed")
    from reidkit.utils.dask import local_cluster

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with local_cluster(0) as a, local_cluster(0) as b:  # schedulers only: the ports are the scheduler's
            servers = [c.scheduler.http_server for c in (a, b)]
            assert all(s.address == "127.0.0.1" and s.port not in (0, 8787) for s in servers), [
                (s.address, s.port) for s in servers
            ]
            assert servers[0].port != servers[1].port
            # its HTTP server answers health checks, and has no dashboard pages
            assert _status(servers[0].port, "health") == 200 and _status(servers[0].port, "status") == 404
    said = [str(w.message) for w in caught]
    assert not any("8787" in m or "already in use" in m for m in said), said
