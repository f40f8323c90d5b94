# Makes conf/ importable as `bnexp.conf` (see pyproject.toml), so the configs ship with the package.
