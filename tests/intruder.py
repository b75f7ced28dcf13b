"""A second user who may write the folder that holds the test's store: the attack of a
store directory swapped under the processes that use it (``signing.Anchor``)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from typing import Iterator

import pytest

# what the intruder makes in its directory: where a process that writes by path would
# put the store's files
DECOYS = ("blobs", "spill", "bells", "queue", "results", "cache", "state", "drafts")


class Intruder:
    """A user created for the test, and a folder (no sticky bit) it may write."""

    def __init__(self, name: str, parent: str) -> None:
        self.name = name
        self.parent = parent
        self.uid = int(subprocess.run(["id", "-u", name], capture_output=True, text=True,
                                      check=True, timeout=30).stdout)

    def swap(self, store: str) -> str:
        """As the intruder: rename ``store`` and put a directory of its own (0777, with
        the store's folders in it) at its path; return where the real store is now."""
        moved = store + ".real"
        script = ('set -e; mv "$1" "$2"; mkdir -m 0777 "$1"; cd "$1"; '
                  f'for d in {" ".join(DECOYS)}; do mkdir -m 0777 "$d"; done')
        subprocess.run(["runuser", "-u", self.name, "--", "sh", "-c", script, "sh", store,
                        moved], check=True, timeout=30)
        return moved

    @staticmethod
    def files(directory: str) -> list[str]:
        """Everything under ``directory`` but the intruder's empty decoy folders."""
        found = []
        for root, dirs, files in os.walk(directory):
            for name in dirs + files:
                relative = os.path.relpath(os.path.join(root, name), directory)
                if relative not in DECOYS:
                    found.append(relative)
        return sorted(found)

    @staticmethod
    def give_back(store: str, moved: str) -> None:
        """Remove the intruder's directory and move the real store back to its path."""
        shutil.rmtree(store)
        os.rename(moved, store)


@pytest.fixture
def intruder() -> Iterator[Intruder]:
    """A second user (removed afterwards) and a folder it may write, to hold a store."""
    if os.geteuid() != 0:
        pytest.skip("only root can create a second user")
    name = f"nbq{secrets.token_hex(4)}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", name], check=True,
                   timeout=60, capture_output=True)
    parent = tempfile.mkdtemp(prefix="nbqueue-shared-", dir="/tmp")
    os.chmod(parent, 0o777)  # no sticky bit: whoever may write it may rename what is in it
    try:
        yield Intruder(name, parent)
    finally:
        shutil.rmtree(parent, ignore_errors=True)
        subprocess.run(["userdel", name], timeout=60, capture_output=True)
