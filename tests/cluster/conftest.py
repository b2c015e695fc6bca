"""A Ray cluster of three nodes on this machine (``ray.cluster_utils.Cluster``: one GCS, three raylets).

The head has no CPUs, so only the driver lives there and every actor must go to a worker node; the two
workers have 2 CPUs each and one custom resource each (``zone_a``/``zone_b``), as a cluster whose nodes
were started with ``ray start --resources``. Node ids differ per raylet even though all share one IP,
so placement is checked by node id. These tests are marked ``cluster``: ``make test-all`` runs them.
"""

from __future__ import annotations

import tempfile
from types import SimpleNamespace

import pytest


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # a session-wide local Ray from other tests: this module needs its own cluster
        ray.shutdown()
    common = {"object_store_memory": 256 * 1024 * 1024, "temp_dir": tempfile.mkdtemp(prefix="sp-cluster-")}
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False, **common})
    a = c.add_node(num_cpus=2, resources={"zone_a": 2}, **common)
    b = c.add_node(num_cpus=2, resources={"zone_b": 2}, **common)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    try:
        yield SimpleNamespace(cluster=c, node_a=a, node_b=b, head=c.head_node.node_id, a=a.node_id, b=b.node_id)
    finally:
        ray.shutdown()
        c.shutdown()
