"""Session metadata: last write wins per field by event timestamp."""

from __future__ import annotations

from typing import Any, Final, NamedTuple

from worker.parts.shared import share_meta_values, share_value


def _packed_stamps(stamps: list[int]) -> int | tuple[int, ...]:
    """One int when all are equal, else the tuple."""
    if stamps and stamps.count(stamps[0]) == len(stamps):
        return stamps[0]
    return tuple(stamps)


class SessionMeta(NamedTuple):
    """Immutable (replaced, never edited), so sessions without metadata share EMPTY_META;
    a third of a dict of tuples. A tuple: a restore builds 100k of them, and a frozen
    dataclass sets each of its fields through `object.__setattr__` (~10x the cost)."""

    order: tuple[str, ...] = ()
    """Names of the fields set, in the order first set (the changelog writes them so)."""
    stamps: int | tuple[int, ...] = ()
    """The event timestamp of each field in `order`; one int when they are all equal (the
    usual case: one session.started set them all). Read through `items`."""
    name: str | None = None
    parent_id: str | None = None
    project_id: str | None = None
    playback_id: str | None = None
    record: bool | None = None
    kind: str | None = None
    user_id: str | None = None
    profiles: list[dict[str, Any]] | None = None
    recording_spec: dict[str, Any] | None = None
    recording_url: str | None = None
    mp4_url: str | None = None

    def _stamp_list(self) -> list[int]:
        stamps = self.stamps
        return [stamps] * len(self.order) if isinstance(stamps, int) else list(stamps)

    def items(self) -> dict[str, tuple[int, Any]]:
        """name -> (timestamp, value) of the fields set, in the order first set."""
        return {
            name: (ts, getattr(self, name))
            for name, ts in zip(self.order, self._stamp_list(), strict=True)
        }

    def with_values(self, timestamp: int, values: dict[str, Any]) -> SessionMeta:
        """Each of `values` set unless that field was set by a newer event."""
        order = list(self.order)
        stamps = self._stamp_list()
        changed: dict[str, Any] = {}
        for name, value in values.items():
            if name in order:
                index = order.index(name)
                if timestamp < stamps[index]:
                    continue
                stamps[index] = timestamp
            else:
                order.append(name)
                stamps.append(timestamp)
            changed[name] = value
        if not changed:
            return self
        return self._replace(
            order=share_value(tuple(order)), stamps=_packed_stamps(stamps), **changed
        )

    def to_wire(self) -> dict[str, tuple[int, Any]]:
        """The changelog form (both formats): {name: [ts, value]} in the order first set."""
        stamps = self.stamps
        if isinstance(stamps, int):  # the usual case (see `stamps`): every checkpoint
            return {name: (stamps, getattr(self, name)) for name in self.order}
        return self.items()

    @staticmethod
    def from_wire(meta: dict[str, list[Any]]) -> SessionMeta:
        """Raises TypeError for a name that is not a metadata field (a corrupt record)."""
        stamps: list[int] = []
        values: dict[str, Any] = {}
        for name, (ts, value) in meta.items():  # one pass: a restore reads 100k of these
            stamps.append(ts)
            values[name] = value
        share_meta_values(values)
        return SessionMeta(share_value(tuple(values)), _packed_stamps(stamps), **values)


EMPTY_META: Final = SessionMeta()
