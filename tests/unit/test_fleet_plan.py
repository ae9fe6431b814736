"""`mlx-server fleet`'s plan: ports, worker URLs, the commands it runs, what it refuses."""

from __future__ import annotations

import sys

import pytest

from mlx_server.app.fleet import RESTART_BACKOFF, Fleet, FleetPlan, main


def test_servers_take_the_ports_after_the_routers_and_remote_workers_join_them() -> None:
    plan = FleetPlan(servers=3, port=1234, remote=("http://10.0.0.2:1234",))
    assert plan.server_ports == [1235, 1236, 1237]
    assert plan.worker_urls == ["http://127.0.0.1:1235", "http://127.0.0.1:1236",
                                "http://127.0.0.1:1237", "http://10.0.0.2:1234"]


def test_each_server_gets_the_shared_arguments_and_its_own_loopback_port() -> None:
    plan = FleetPlan(servers=2, port=9000, server_args=("--model", "gemma"))
    assert plan.server_command(9001) == [sys.executable, "-m", "mlx_server", "--model", "gemma",
                                         "--host", "127.0.0.1", "--port", "9001"]


def test_the_router_command_routes_to_every_worker_with_fleet_settings() -> None:
    plan = FleetPlan(servers=2, port=9000, host="0.0.0.0", policy="round_robin",
                     router_args=("--api-key", "k"), balance_threshold=4)
    command = plan.router_command(metrics_port=9100)
    assert command[:3] == [sys.executable, "-m", "sglang_router.launch_router"]
    joined = " ".join(command)
    assert "--worker-urls http://127.0.0.1:9001 http://127.0.0.1:9002 " in joined
    assert "--host 0.0.0.0 --port 9000 --policy round_robin" in joined
    assert "--prometheus-port 9100" in joined and "--balance-abs-threshold 4" in joined
    assert command[-2:] == ["--api-key", "k"]  # the user's own last: they win


@pytest.mark.parametrize("argv", [["--servers", "0"], ["--servers", "2", "--", "--port", "9"],
                                  ["--servers", "-1"]])
def test_plans_that_cannot_work_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2


def test_a_server_that_keeps_dying_waits_longer_each_time_up_to_a_cap() -> None:
    fleet = Fleet(FleetPlan(servers=1, port=9000))
    fleet._started[9001] = 100.0
    waits = [fleet._backoff(9001, now=101.0) for _ in range(len(RESTART_BACKOFF) + 2)]
    assert waits == [*RESTART_BACKOFF, RESTART_BACKOFF[-1], RESTART_BACKOFF[-1]]
    fleet._started[9001] = 0.0  # up for minutes before this exit: no long wait
    assert fleet._backoff(9001, now=1000.0) == RESTART_BACKOFF[0]


def test_cuda_devices_give_each_server_its_own_gpu() -> None:
    plan = FleetPlan(servers=3, port=9000, cuda_devices=("0", "1"))
    assert [plan.server_env(i, {"A": "b"}).get("CUDA_VISIBLE_DEVICES") for i in range(3)] == [
        "0", "1", "0"]
    assert FleetPlan(servers=1, port=9000).server_env(0, {"A": "b"}) == {"A": "b"}
