"""disk_low: notices/watches.DiskWatch with an injected disk-usage function and clock (never
this machine's free space), which directories it watches per backend, and the
[notifications] disk_free_min key."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from relayd.clock import SystemClock
from relayd.config.model import Config, render_effective
from relayd.daemon.schedule import DaemonJobs
from relayd.errors import ConfigError
from relayd.notices.notifier import Notifier, NotifySettings
from relayd.notices.watches import DiskWatch, disk_paths
from tests.conftest import ConfigFactory
from tests.support.fakes import T0, FakeClock, Sink

GIB = 1024**3
MIB = 1024**2
DIRECTORY = 'provider = "directory"\npath = "outbox"'
QUEUE, TRANSCRIPTS = Path("/srv/relayd/queue"), Path("/srv/relayd/transcripts")


@dataclass
class Disks:
    """shutil.disk_usage's stand-in: (total, used, free) per path, or an OSError."""

    free: dict[Path, int]
    total: int = 100 * GIB
    asked: list[Path] = field(default_factory=list)

    def __call__(self, path: Path) -> tuple[int, int, int]:
        self.asked.append(path)
        if path not in self.free:
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return self.total, self.total - self.free[path], self.free[path]


def notifier() -> tuple[Notifier, Sink]:
    sink = Sink()
    settings = NotifySettings(hostname="node1.example", digest_interval=60.0)
    return Notifier(sink, settings), sink


async def test_low_space_raises_disk_low_naming_the_path_and_more_space_clears_it() -> None:
    notices, sink = notifier()
    clock = FakeClock()
    disks = Disks({QUEUE: 500 * MIB, TRANSCRIPTS: 10 * GIB})
    watch = DiskWatch(notices, GIB, [QUEUE, TRANSCRIPTS], usage=disks)
    await watch.check(clock.now())
    assert disks.asked == [QUEUE, TRANSCRIPTS]
    assert notices.active() == [("disk_low", str(QUEUE), T0)]
    assert await notices.flush(clock.now())
    subject, body, _ = sink.sent[0]
    assert subject == f"[relayd node1.example] Disk space is low ({QUEUE})"
    assert "PROBLEM: Disk space is low (/srv/relayd/queue)  [disk_low]" in body
    assert (
        f"Detail:     500.0 MiB free of 100.0 GiB on the file system holding {QUEUE}; "
        "notifications.disk_free_min is 1.0 GiB"
    ) in body
    clock.at += 60
    disks.free[QUEUE] = 2 * GIB
    await watch.check(clock.now())
    assert notices.active() == []
    clock.at += 60
    assert await notices.flush(clock.now())
    subject, body, _ = sink.sent[1]
    assert subject == "[relayd node1.example] 1 resolved"
    assert f"RESOLVED: Disk space is low ({QUEUE})" in body


async def test_exactly_the_minimum_is_enough() -> None:
    notices, _ = notifier()
    watch = DiskWatch(notices, GIB, [QUEUE], usage=Disks({QUEUE: GIB}))
    await watch.check(T0)
    assert notices.active() == []


async def test_a_path_that_cannot_be_measured_is_logged_and_its_condition_kept() -> None:
    notices, _ = notifier()
    disks = Disks({TRANSCRIPTS: 1 * MIB})
    watch = DiskWatch(notices, GIB, [TRANSCRIPTS], usage=disks)
    await watch.check(T0)
    assert notices.active() == [("disk_low", str(TRANSCRIPTS), T0)]
    del disks.free[TRANSCRIPTS]  # e.g. the directory was removed, or the mount went away
    with capture_logs() as logs:
        await watch.check(T0 + 60)
    assert notices.active() == [("disk_low", str(TRANSCRIPTS), T0)]  # not cleared: unknown
    assert [(e["event"], e["log_level"], e["path"]) for e in logs] == [
        ("disk_check_failed", "warning", str(TRANSCRIPTS))
    ]


async def test_one_path_given_twice_is_checked_once() -> None:
    notices, _ = notifier()
    disks = Disks({QUEUE: 10 * GIB})
    await DiskWatch(notices, GIB, [QUEUE, QUEUE], usage=disks).check(T0)
    assert disks.asked == [QUEUE]


def with_transcripts(config: Config, directory: Path) -> Config:
    """`config` with log.transcript_dir set ([log] comes before the tables make_config adds)."""
    log = config.log.model_copy(update={"transcript_dir": directory})
    return config.model_copy(update={"log": log})


def test_sqlite_watches_the_queue_directory_and_the_transcripts(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    config = make_config(DIRECTORY)
    assert disk_paths(config) == [tmp_path]  # queue.path is tmp_path / "queue.db"
    assert disk_paths(with_transcripts(config, tmp_path / "t")) == [tmp_path, tmp_path / "t"]


def test_postgres_watches_only_local_directories(make_config: ConfigFactory) -> None:
    postgres = 'backend = "postgres"\ndsn = "postgresql://relayd@db.internal/relayd"'
    config = make_config(DIRECTORY, queue=postgres)
    assert disk_paths(config) == []  # the database's disk is the DBA's
    assert disk_paths(with_transcripts(config, TRANSCRIPTS)) == [TRANSCRIPTS]


NOTIFY = '\n[notifications]\nmailbox = "ops@x.example"\n'


def test_disk_free_min_is_a_size_off_by_default(make_config: ConfigFactory) -> None:
    config = make_config(DIRECTORY, extra=NOTIFY)
    assert config.notifications is not None and config.notifications.disk_free_min is None
    config = make_config(DIRECTORY, extra=NOTIFY + 'disk_free_min = "1GiB"\n')
    assert config.notifications is not None and config.notifications.disk_free_min == GIB
    assert 'disk_free_min = "1GiB"' in render_effective(config)


def test_a_bad_disk_free_min_names_the_key_and_line(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config(DIRECTORY, extra=NOTIFY + 'disk_free_min = "plenty"\n')
    lines = (tmp_path / "relayd.toml").read_text().splitlines()
    line = next(n for n, text in enumerate(lines, 1) if text.startswith("disk_free_min"))
    assert (caught.value.key, caught.value.line) == ("notifications.disk_free_min", line)
    assert '"plenty" is not a size' in str(caught.value)


def test_the_disk_job_is_scheduled_only_with_a_minimum_and_a_directory(
    make_config: ConfigFactory,
) -> None:
    store: Any = object()
    postgres = 'backend = "postgres"\ndsn = "postgresql://relayd@db.internal/relayd"'
    with_min = NOTIFY + 'disk_free_min = "1GiB"\n'
    cases = {
        "sqlite, minimum set": (make_config(DIRECTORY, extra=with_min), True),
        "sqlite, no minimum": (make_config(DIRECTORY, extra=NOTIFY), False),
        "postgres, no transcripts": (make_config(DIRECTORY, queue=postgres, extra=with_min), False),
    }
    for name, (config, expected) in cases.items():
        notices, _ = notifier()
        jobs = DaemonJobs(store, FakeClock(), notices, None, {}, timeline=SystemClock())
        jobs.apply(config, T0)
        assert ("disk" in jobs.schedule.job_names()) is expected, name
