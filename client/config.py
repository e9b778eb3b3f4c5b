"""Where the `coffer` command keeps its login: one JSON file in the user's config dir.

`COFFER_CONFIG_DIR` overrides the directory (two "devices" on one machine); the file is
created with 0600 permissions because it holds a device token.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


def config_dir() -> Path:
    if env := os.environ.get("COFFER_CONFIG_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "coffer"


@dataclass
class Login:
    url: str
    token: str
    username: str
    device_name: str


def config_file() -> Path:
    return config_dir() / "config.json"


def save_login(login: Login) -> Path:
    path = config_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(asdict(login), out)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def load_login() -> Login | None:
    try:
        return Login(**json.loads(config_file().read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def forget_login() -> None:
    config_file().unlink(missing_ok=True)
