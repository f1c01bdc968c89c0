"""Plugin registries: one decorator line registers a defense or an attack.

Built-in plugins live in this distribution's ``defenses`` and ``attacks`` packages and
register themselves when imported. Third-party packages declare entry points in the
groups ``arena.defenses`` and ``arena.attacks``; those are loaded lazily, only the name
asked for, so a broken plugin elsewhere cannot break the one you want. ``list`` loads
everything and reports broken plugins instead of failing.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import ClassVar, TypeVar

from arena.util.errors import ArenaError, UnknownNameError
from arena.util.version import __version__

T = TypeVar("T", bound=type)


DISTRIBUTION = "watermark-arena"


CHAIN_SEPARATOR = "+"  # arena.core.chain.SEPARATOR


@dataclass(frozen=True)
class PluginInfo:
    """What ``arena list`` shows about one plugin."""

    name: str
    kind: str
    cls: type
    source: str  # distribution that provides it, with version

    @property
    def summary(self) -> str:
        doc = (self.cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


@dataclass(frozen=True)
class BrokenPlugin:
    name: str
    kind: str
    error: str


class Registry:
    """Name -> plugin class for one kind of plugin."""

    # The package whose entry point is being loaded. Shared by both registries: one
    # module of a package may register a defense and an attack, and both are its own.
    _loading_source: ClassVar[str | None] = None

    def __init__(
        self, kind: str, group: str, builtin_package: str, *, chains: bool = False
    ) -> None:
        self.kind = kind
        self.group = group
        self.builtin_package = builtin_package
        self.chains = chains  # "a+b" names a chain of registered plugins (attacks)
        # What builds a chain's class from its name and its parts' classes: set by the
        # module that defines chains (``arena.core.chain``), which the plugins import.
        self.composer: Callable[[str, tuple[type, ...]], type] | None = None
        self._entries: dict[str, PluginInfo] = {}
        self._broken: dict[str, BrokenPlugin] = {}
        self._chains: dict[str, type] = {}
        self._builtins_loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: ``@register_attack("rtal")``."""

        def decorate(cls: T) -> T:
            missing = sorted(getattr(cls, "__abstractmethods__", ()))
            if missing:  # refused when loaded, not mid-match
                raise ArenaError(
                    f"{self.kind} {name!r} ({cls.__module__}.{cls.__qualname__}) does not "
                    f"implement {', '.join(missing)}"
                )
            existing = self._entries.get(name)
            if existing is not None and existing.cls is not cls:
                raise ArenaError(
                    f"{self.kind} {name!r} is registered twice: by {existing.cls.__module__} "
                    f"and by {cls.__module__}"
                )
            cls.name = name
            source = self._loading_source or f"{DISTRIBUTION} {__version__}"
            self._entries[name] = PluginInfo(name, self.kind, cls, source)
            return cls

        return decorate

    def get(self, name: str) -> type:
        """The plugin class registered as ``name``; a did-you-mean error otherwise.
        Where chains are on, ``"a+b"`` is the chain of ``a`` then ``b``
        (``arena.core.chain``), built from the parts' classes."""
        self._load_builtins()
        if self.chains and CHAIN_SEPARATOR in name:
            return self._chain(name)
        providers = self.providers(name)
        if len(providers) > 1:
            raise ArenaError(
                f"{self.kind} {name!r} is provided by {' and by '.join(providers)}; uninstall "
                "all but one (a result must say whose plugin it measured)"
            )
        if name not in self._entries:
            self._load_entry_point(name)
        if name in self._entries:
            return self._entries[name].cls
        if name in self._broken:
            raise ArenaError(
                f"{self.kind} {name!r} is installed but failed to load: {self._broken[name].error}"
            )
        raise UnknownNameError(self.kind, name, self._all_names(), hint=f"arena list {self.kind}s")

    def _chain(self, name: str) -> type:
        if name not in self._chains:
            if self.composer is None:
                raise ArenaError(f"{name!r}: no module that builds chains of {self.kind}s loaded")
            parts = tuple(self.get(part) for part in name.split(CHAIN_SEPARATOR))
            self._chains[name] = self.composer(name, parts)
        return self._chains[name]

    def info(self, name: str) -> PluginInfo:
        cls = self.get(name)
        if name in self._chains:  # its source: its parts' packages
            parts = [self.info(part).source for part in name.split(CHAIN_SEPARATOR)]
            return PluginInfo(name, self.kind, cls, " + ".join(dict.fromkeys(parts)))
        return self._entries[name]

    def entries(self) -> list[PluginInfo]:
        """Every plugin, loading all entry points; broken ones go to ``broken()``, and so
        does a name two packages provide (``get`` refuses it)."""
        self._load_builtins()
        for entry_point in metadata.entry_points(group=self.group):
            if entry_point.name not in self._entries:
                self._load_entry_point(entry_point.name)
            providers = self.providers(entry_point.name)
            if len(providers) > 1:
                self._broken[entry_point.name] = BrokenPlugin(
                    entry_point.name,
                    self.kind,
                    f"provided by {' and by '.join(providers)}; uninstall all but one",
                )
        return sorted(
            (info for name, info in self._entries.items() if name not in self._broken),
            key=lambda info: info.name,
        )

    def providers(self, name: str) -> list[str]:
        """The packages that provide ``name``: this distribution for a built-in, and the
        distribution of every entry point of that name."""
        found = []
        builtin = self._entries.get(name)
        if builtin is not None and builtin.source.startswith(f"{DISTRIBUTION} "):
            found.append(builtin.source)
        for entry_point in metadata.entry_points(group=self.group, name=name):
            dist = entry_point.dist
            source = f"{dist.name} {dist.version}" if dist else entry_point.value
            if source not in found:
                found.append(source)
        return found

    def names(self) -> list[str]:
        return [info.name for info in self.entries()]

    def broken(self) -> list[BrokenPlugin]:
        self.entries()
        return sorted(self._broken.values(), key=lambda broken: broken.name)

    def _all_names(self) -> list[str]:
        names = set(self._entries)
        names.update(ep.name for ep in metadata.entry_points(group=self.group))
        return sorted(names)

    def _load_builtins(self) -> None:
        if self._builtins_loaded:
            return
        self._builtins_loaded = True
        package = importlib.import_module(self.builtin_package)
        for module in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
            try:
                importlib.import_module(module.name)
            except Exception as error:  # one broken module must not hide the others
                self._broken[module.name] = BrokenPlugin(module.name, self.kind, repr(error))

    def _owns(self, name: str, cls: type) -> bool:
        info = self._entries.get(name)
        return info is not None and info.cls is cls

    def _load_entry_point(self, name: str) -> None:
        for entry_point in metadata.entry_points(group=self.group, name=name):
            dist = entry_point.dist
            previous = Registry._loading_source
            Registry._loading_source = f"{dist.name} {dist.version}" if dist else entry_point.value
            try:
                loaded = entry_point.load()
                registered = getattr(loaded, "name", "") if isinstance(loaded, type) else ""
                if registered and registered != name and self._owns(registered, loaded):
                    raise ArenaError(
                        f"the entry point is named {name!r} but its class registers as "
                        f"{registered!r}; the two names must match"
                    )
                # An entry point may name an undecorated class: register it under its name.
                if name not in self._entries and isinstance(loaded, type):
                    self.register(name)(loaded)
            except Exception as error:  # a broken third-party plugin is reported, not fatal
                self._broken[name] = BrokenPlugin(name, self.kind, repr(error))
                continue
            finally:
                Registry._loading_source = previous
            if name not in self._entries:
                self._broken[name] = BrokenPlugin(
                    name, self.kind, f"entry point {entry_point.value!r} did not register {name!r}"
                )
            return


defenses = Registry("defense", "arena.defenses", "defenses")


attacks = Registry("attack", "arena.attacks", "attacks", chains=True)


register_defense = defenses.register


register_attack = attacks.register


def registry_for(kind: str) -> Registry:
    by_kind = {"defense": defenses, "defenses": defenses, "attack": attacks, "attacks": attacks}
    if kind not in by_kind:
        raise UnknownNameError("plugin kind", kind, ["defenses", "attacks"])
    return by_kind[kind]
