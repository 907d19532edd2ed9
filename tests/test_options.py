"""`docker run` options -> docker SDK arguments (`tasks/docker/options.py`); pure, no engine."""

from __future__ import annotations

from typing import Any

import pytest

from batch_agent.tasks.docker.options import OptionError, isolation_breaches, parse_options


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (None, {}),
        ("  ", {}),
        ("--network host", {"network": "host"}),
        ("--network=host", {"network": "host"}),
        ("--privileged", {"privileged": True}),
        ("--privileged=false", {"privileged": False}),
        ("--shm-size 64m", {"shm_size": 64 * 2**20}),
        ("--shm-size=1g", {"shm_size": 2**30}),
        ("--shm-size 1GiB", {"shm_size": 2**30}),
        ("--ipc host --pid=host", {"ipc_mode": "host", "pid_mode": "host"}),
        ("-e A=1 --env B=x=y -eC=", {"environment": {"A": "1", "B": "x=y", "C": ""}}),
        ("-e 'A=two words'", {"environment": {"A": "two words"}}),
        ("--add-host db:10.0.0.2", {"extra_hosts": {"db": "10.0.0.2"}}),
        ("--cap-add NET_ADMIN --cap-add=SYS_PTRACE", {"cap_add": ["NET_ADMIN", "SYS_PTRACE"]}),
        ("--cap-drop ALL", {"cap_drop": ["ALL"]}),
        ("--device /dev/fuse", {"devices": ["/dev/fuse"]}),
        ("--gpus all", {"device_requests": [{"capabilities": [["gpu"]], "count": -1}]}),
        ("--gpus 2", {"device_requests": [{"capabilities": [["gpu"]], "count": 2}]}),
        (
            "--gpus '\"device=0,2\"'",
            {"device_requests": [{"capabilities": [["gpu"]], "device_ids": ["0", "2"]}]},
        ),
        (
            "--ulimit nofile=1024:2048 --ulimit core=0",
            {
                "ulimits": [
                    {"name": "nofile", "soft": 1024, "hard": 2048},
                    {"name": "core", "soft": 0, "hard": 0},
                ]
            },
        ),
        ("-m 512m", {"mem_limit": 512 * 2**20}),
        ("--memory=100000", {"mem_limit": 100000}),
        ("--cpus 1.5", {"nano_cpus": 1_500_000_000}),
        ("-w /work --workdir=/w2", {"working_dir": "/w2"}),
        ("-u 1000:1000", {"user": "1000:1000"}),
        ("--init", {"init": True}),
        ("--tmpfs /run --tmpfs /scratch:size=64m", {"tmpfs": {"/run": "", "/scratch": "size=64m"}}),
        ("--security-opt seccomp=unconfined", {"security_opt": ["seccomp=unconfined"]}),
        ("--name web -h box", {"name": "web", "hostname": "box"}),
        ("--hostname=box", {"hostname": "box"}),
        ("--entrypoint '/bin/sh -x'", {"entrypoint": ["/bin/sh -x"]}),
        ("--rm", {}),
        ("-l a=1 --label b --label=c=3", {"labels": {"a": "1", "b": "", "c": "3"}}),
    ],
)
def test_parse_options_maps_docker_run_flags(options: str | None, expected: dict[str, Any]) -> None:
    """Each supported `docker run` flag becomes the matching containers.create keyword."""
    assert parse_options(options) == expected


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("--volume /a:/b", 'options: "--volume" is not allowed; use the "volumes" field'),
        ("-v /a:/b", 'options: "-v" is not allowed; use the "volumes" field'),
        ("--volume=/a:/b", 'options: "--volume=/a:/b" is not allowed; use the "volumes" field'),
        ("--mount type=bind", 'options: "--mount" is not allowed'),
        ("--frobnicate", 'options: "--frobnicate" is not supported'),
        ("-it", 'options: "-it" is not supported'),
        ("--detach", 'options: "--detach" is not supported'),
        ("--network", 'options: "--network" needs a value'),
        ("--cpus lots", 'options: "--cpus" value "lots" is not a number'),
        ("--shm-size big", 'options: "--shm-size" value "big" is not a size'),
        ("-e HOME", 'options: "--env" value "HOME" needs the form NAME=VALUE'),
        ("--ulimit nofile", 'options: "--ulimit" value "nofile" needs the form'),
        ("--gpus some", 'options: "--gpus" value "some" is not supported'),
        ("--add-host db", 'options: "--add-host" value "db" needs the form HOST:IP'),
        ("--tmpfs run", 'options: "--tmpfs" value "run" needs an absolute path'),
        ("--privileged=maybe", 'options: "--privileged=maybe": expected true or false'),
        ("busybox", 'options: "busybox" is not an option'),
        ("-e 'A=1", "options: No closing quotation"),
    ],
)
def test_parse_options_refuses_naming_the_option(options: str, message: str) -> None:
    """Unknown, malformed and refused options raise OptionError naming the option."""
    with pytest.raises(OptionError) as raised:
        parse_options(options)
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize(
    ("options", "breaches"),
    [
        ("--privileged", ["--privileged"]),
        ("--pid host --ipc=host", ["--pid=host", "--ipc=host"]),
        (
            "--cap-add ALL --cap-add CHOWN --cap-add cap_net_admin",
            ["--cap-add=ALL", "--cap-add=NET_ADMIN"],
        ),
        ("--device /dev/fuse", ["--device"]),
        ("--network host", ["--network"]),
        ("--shm-size 1g --cap-add CHOWN --pid container:x", []),
    ],
)
def test_isolation_breaches_name_what_defeats_block_external_network(
    options: str, breaches: list[str]
) -> None:
    """Options that would let a blockExternalNetwork container out are named; others pass."""
    assert isolation_breaches(parse_options(options)) == breaches
