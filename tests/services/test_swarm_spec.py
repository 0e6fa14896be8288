"""A stack's service spec as its clone gets it (services/swarm.py): renamed, on the clone's
networks, with its own volume and published ports, the source's spec untouched. No engine."""

from __future__ import annotations

import copy

from services.docker import JSON
from services.planning import PortRemap
from services.swarm import STACK, clone_spec, stack_environment
from services.traffic.router import _node_address

SOURCE: JSON = {
    "ID": "svc1",
    "Spec": {
        "Name": "shop_db",
        "Labels": {STACK: "shop", "clonebot.owner": "U1"},
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": "postgres:15",
                "Labels": {STACK: "shop"},
                "Mounts": [
                    {
                        "Type": "volume", "Source": "shop_data", "Target": "/data",
                        "VolumeOptions": {"Labels": {STACK: "shop"}},
                    },
                    {"Type": "tmpfs", "Target": "/tmp"},
                ],
                "Secrets": [{"SecretID": "s1", "SecretName": "shop_pw"}],
            },
            "Networks": [{"Target": "net-shop", "Aliases": ["db"]}, {"Target": "net-ext"}],
            "Placement": {"Constraints": ["node.hostname == cbh2"]},
        },
        "Mode": {"Replicated": {"Replicas": 1}},
        "EndpointSpec": {
            "Mode": "dnsrr",
            "Ports": [{"TargetPort": 5432, "PublishedPort": 5432, "PublishMode": "host"}],
        },
    },
}  # fmt: skip


def test_a_clone_spec_is_the_source_spec_under_the_clone_name_with_its_own_data_and_ports() -> None:
    before = copy.deepcopy(SOURCE)
    ports: list[PortRemap] = []
    used = {5432, 20000}
    labels = {STACK: "qa", "clonebot.job": "j1", "clonebot.cloned-from": "shop"}
    spec = clone_spec(SOURCE, "shop", "qa", labels, {"net-shop": "net-qa"}, used, ports)

    assert before == SOURCE, "the source's spec was changed"
    assert spec["Name"] == "qa_db"
    assert spec["Labels"] == {STACK: "qa", "clonebot.owner": "U1", "clonebot.job": "j1",
                              "clonebot.cloned-from": "shop"}  # fmt: skip
    container = spec["TaskTemplate"]["ContainerSpec"]
    assert container["Labels"] == {STACK: "qa"}
    assert container["Mounts"][0]["Source"] == "qa_data"  # its own volume, never the source's
    assert container["Mounts"][0]["VolumeOptions"]["Labels"] == {STACK: "qa"}
    assert container["Mounts"][1] == {"Type": "tmpfs", "Target": "/tmp"}
    assert container["Secrets"] == [{"SecretID": "s1", "SecretName": "shop_pw"}]  # by reference
    assert spec["TaskTemplate"]["Networks"] == [
        {"Target": "net-qa", "Aliases": ["db"]},
        {"Target": "net-ext"},  # not the stack's: joined as it is
    ]
    assert spec["TaskTemplate"]["Placement"] == {"Constraints": ["node.hostname == cbh2"]}
    assert spec["EndpointSpec"]["Ports"][0]["PublishedPort"] == 20001  # the first free one
    assert ports == [PortRemap("qa_db", "5432/tcp", "5432", "20001")]
    assert 20001 in used


def test_a_stack_lists_its_services_as_layers_and_running_tasks_as_nodes() -> None:
    task = {
        "ID": "t1", "ServiceID": "svc1", "Slot": 1, "NodeID": "n2",
        "Status": {"State": "running", "ContainerStatus": {"ContainerID": "c" * 64}},
    }  # fmt: skip
    env = stack_environment("shop", [SOURCE], {"svc1": [task]})
    assert (env.name, env.kind, env.owner) == ("shop", "stack", "U1")
    [layer] = env.layers
    assert (layer.name, layer.scaling) == ("db", "stateful")
    assert [(n.name, n.state, n.id) for n in layer.nodes] == [("shop_db.1", "running", "c" * 64)]
    idle = stack_environment("shop", [SOURCE], {})  # scaled to no task: a node with no state
    assert [n.state for n in idle.nodes] == ["no task"]


def test_a_node_is_reached_at_its_address_or_its_managers_when_it_reports_none_of_use() -> None:
    assert _node_address({"Status": {"Addr": "10.0.0.7"}}) == "10.0.0.7"
    manager = {"Status": {"Addr": "0.0.0.0"}, "ManagerStatus": {"Addr": "10.0.0.8:2377"}}
    assert _node_address(manager) == "10.0.0.8"
    assert _node_address({"Status": {"Addr": "127.0.0.1"}}) is None
    assert _node_address({"Status": {"Addr": "10.0.0.7 backup"}}) is None  # never into HAProxy
