"""The projection: everything the service serves from memory, following the change log.

The ``Projection`` holds every library's live state (``LibraryState``: its record, index and
chunk references) and the position of the last change it reflects. The ``Projector`` is the
**only** code that changes it, and the only publisher of the local event hub: it reads durable
batches from the log and applies them strictly in position order, then publishes their events,
so a subscriber that sees an event can search for its effect.

Whoever needs the projection to have reached a position drives it there (``catch_up``): a
writer, once its commit is durable, so that a write is acknowledged only when its effect can be
read back (read-your-writes); a follower of changes written elsewhere, when the log tells it of
new ones. One applier at a time; the others wait for it and find their work done.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import cast

from arrwdb.domain._library_state import LibraryChange, LibraryState
from arrwdb.domain._watch_engine import LiveWatch, WatchBook
from arrwdb.domain.changes import (
    Batch,
    Change,
    DocumentSaved,
    LibraryCreated,
    LibraryDeleted,
)
from arrwdb.domain.errors import HistoryLostError, InternalError, LibraryNotFoundError
from arrwdb.domain.filters import Predicate
from arrwdb.domain.models import Library, Matrix
from arrwdb.domain.ports import (
    ChangeLog,
    EventHub,
    IndexFactory,
    IndexStore,
    Repository,
    SerialCompute,
)
from arrwdb.domain.watches import Watch

logger = logging.getLogger("arrwdb.projection")

#: How many changes the projector reads from the log at a time (whole batches).
READ_CHANGES = 10_000


class Projection:
    """Every library's state as of position ``applied``. Readers look states up here (dict
    reads: safe while the projector changes the dict); only the projector changes it."""

    def __init__(self, make_index: IndexFactory) -> None:
        self.make_index = make_index
        self.applied = 0
        self.states: dict[str, LibraryState] = {}
        self.names: dict[str, str] = {}

    def state(self, library_id: str) -> LibraryState:
        """A library's state; raises ``LibraryNotFoundError``."""
        state = self.states.get(library_id) if isinstance(library_id, str) else None
        if state is None:
            raise LibraryNotFoundError(str(library_id))
        return state

    def named(self, name: str) -> LibraryState:
        library_id = self.names.get(name)
        state = None if library_id is None else self.states.get(library_id)
        if state is None:
            raise LibraryNotFoundError(name)
        return state

    def libraries(self) -> list[Library]:
        return [state.library for state in list(self.states.values())]

    def load(self, store: Repository, position: int, index_store: IndexStore | None = None) -> None:
        """Fill an empty projection with the store's tables as of ``position`` (their head):
        each library's index is the saved one brought up to date, or built from its documents."""
        libraries = store.list_libraries()
        if index_store is not None:
            index_store.retain([library.id for library in libraries])
        for library in libraries:
            state = LibraryState(library, self.make_index)
            docs = list(store.iter_documents(library.id))
            saved = index_store.load(library) if index_store is not None else None
            with state.lock.write():
                if saved is not None:
                    changed = state.restore(docs, saved)
                    logger.info(
                        "library %s: saved index loaded, %d label(s) brought up to date",
                        library.id,
                        changed,
                    )
                else:
                    state.add_documents(docs)
            self.states[library.id] = state
            self.names[library.name] = library.id
        self.applied = position


class Projector:
    """Applies the log's batches to a projection, in position order, and publishes their
    events to the hub. Thread-safe."""

    def __init__(
        self,
        projection: Projection,
        log: ChangeLog,
        hub: EventHub,
        index_store: IndexStore | None = None,
        serial: SerialCompute | None = None,
    ) -> None:
        self._projection = projection
        self._log = log
        self._hub = hub
        self._index_store = index_store
        #: the context the watches score a batch in (see ``SerialCompute``)
        self._serial: SerialCompute = serial or contextlib.nullcontext
        self._lock = threading.Lock()  # one applier at a time
        # first position of a batch -> its writer's stacked vectors (single dict operations:
        # atomic, no lock needed)
        self._hints: dict[int, Matrix] = {}
        #: the live watches: one more projection, brought up to date with every batch
        self.watches = WatchBook()

    @property
    def applied(self) -> int:
        return self._projection.applied

    def watch(self, watch: Watch, predicate: Predicate | None, history: int) -> LiveWatch:
        """Start a watch at the position applied now (between batches: it sees each later
        one exactly once); a watch of that id already started is returned as it is. Raises
        ``LibraryNotFoundError``."""
        with self._lock:
            started = self.watches.get(watch.id)
            if started is not None:
                return started
            state = self._projection.state(watch.library_id)
            with state.lock.read():
                return self.watches.add(watch, state, predicate, history, self._projection.applied)

    def unwatch(self, watch_id: str, reason: str) -> LiveWatch | None:
        with self._lock:
            return self.watches.remove(watch_id, reason)

    def catch_up(self, through: int, *, vectors: tuple[int, Matrix] | None = None) -> None:
        """Return once every change up to position ``through`` (durable in the log) is
        applied and published. ``vectors`` = ``(first, matrix)``: the batch at ``first``
        saves documents whose chunk embeddings, in order, are ``matrix`` (the writer's own
        stack: applied as it is, not stacked again)."""
        projection = self._projection
        if projection.applied >= through:  # another writer's catch-up applied it
            return
        if vectors is not None:
            self._hints[vectors[0]] = vectors[1]
        with self._lock:
            while projection.applied < through:
                batches = self._log.read(projection.applied, READ_CHANGES)
                if not batches:
                    raise InternalError(
                        f"the log holds nothing after {projection.applied}, but position "
                        f"{through} was said to be durable"
                    )
                for batch in batches:
                    self._apply(batch)
        if vectors is not None:
            self._hints.pop(vectors[0], None)

    def _apply(self, batch: Batch) -> None:
        projection = self._projection
        if batch.first != projection.applied + 1:
            raise InternalError(f"batch at {batch.first} after position {projection.applied}")
        vectors = self._hints.pop(batch.first, None)
        # A watched library keeps its write lock until its watches have followed the batch and
        # its index has linked the new vectors into its graph: the watches score the batch
        # (exact scans) before the graph work, so their events do not wait for it, and no
        # search sees the index in between.
        with contextlib.ExitStack() as held:
            watched: dict[str, LibraryState] = {}
            try:
                for library_id, run in _runs(batch.changes):
                    first = run[0]
                    if isinstance(first, LibraryCreated):
                        library = first.library
                        state = LibraryState(library, projection.make_index)
                        projection.states[library.id] = state
                        projection.names[library.name] = library.id
                    elif isinstance(first, LibraryDeleted):
                        self._delete(library_id, locked=library_id in watched)
                        watched.pop(library_id, None)
                    else:
                        whole = vectors if len(run) == len(batch) else None
                        self._apply_run(library_id, run, whole, held, watched)
                # the watches' events exist before the change events that caused them are
                # published (and so before the write is answered)
                try:
                    with self._serial() if watched else contextlib.nullcontext():
                        self.watches.after_batch(batch, projection.states)
                except Exception:  # a watch must never stop the log being applied: end them
                    logger.exception(
                        "updating the watches after %s failed: closing them", batch.last
                    )
                    self.watches.close_all("internal_error")
            finally:
                for state in watched.values():
                    state.journal = None
                    state.link()
        self._hub.publish(batch.events())
        projection.applied = batch.last  # after the publish: whoever sees it finds the events

    def _apply_run(
        self,
        library_id: str,
        run: Sequence[Change],
        vectors: Matrix | None,
        held: contextlib.ExitStack,
        watched: dict[str, LibraryState],
    ) -> None:
        projection = self._projection
        state = projection.states.get(library_id)
        if state is None:  # the log is ordered: a change of a library that is not there is a bug
            logger.error("change of unknown library %s at %s", library_id, projection.applied)
            return
        # _runs leaves a library's creation and deletion out of a run: what is left is the
        # state's own to apply
        changes = cast(Sequence[LibraryChange], run)
        old_name = state.library.name
        if library_id in watched:  # (its write lock is held already)
            state.apply(changes, vectors, link=False)
        elif self.watches.count(library_id):
            held.enter_context(state.lock.write())  # until the batch's watches are done
            watched[library_id] = state
            state.start_journal()  # what the batch does to its chunks, change by change
            state.apply(changes, vectors, link=False)
        else:
            with state.lock.write():
                state.apply(changes, vectors)
        new_name = state.library.name
        if new_name != old_name:
            if projection.names.get(old_name) == library_id:
                del projection.names[old_name]
            projection.names[new_name] = library_id

    def _delete(self, library_id: str, *, locked: bool = False) -> None:
        """Drop a library's state (``locked``: its write lock is held already)."""
        projection = self._projection
        state = projection.states.get(library_id)
        if state is None:
            return
        with contextlib.nullcontext() if locked else state.lock.write():
            del projection.states[library_id]
            state.unsaved = 0
        if projection.names.get(state.library.name) == library_id:
            del projection.names[state.library.name]
        if self._index_store is not None:
            try:
                self._index_store.discard(library_id)
            except Exception:  # a leftover save is ignored on the next open (retain)
                logger.exception("could not discard the saved index of %s", library_id)


def _runs(changes: Sequence[Change]) -> Iterator[tuple[str, Sequence[Change]]]:
    """Consecutive changes of one library, applied under one hold of its write lock; a
    library's creation and deletion each stand alone."""
    first = changes[0] if changes else None
    if isinstance(first, DocumentSaved) and len(changes) == 1:  # the usual small write
        yield first.library_id, changes
        return
    run: list[Change] = []
    run_library = ""
    for change in changes:
        library_id = change.library_id
        alone = isinstance(change, LibraryCreated | LibraryDeleted)
        if run and (alone or library_id != run_library or isinstance(run[0], LibraryCreated)):
            yield run_library, run
            run = []
        run.append(change)
        run_library = library_id
        if isinstance(change, LibraryDeleted):
            yield run_library, run
            run = []
    if run:
        yield run_library, run


class Follower:
    """Applies the changes other processes commit to a shared log: waits for the log's head to
    pass the projection and drives the projector there, in a thread, until ``stop``."""

    def __init__(self, log: ChangeLog, projector: Projector, wait: float = 1.0) -> None:
        self._log = log
        self._projector = projector
        self._wait = wait
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        #: why following stopped making progress, if it did (for readiness)
        self.error: Exception | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="arrwdb-follower", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                head = self._log.wait_for(self._projector.applied, timeout=self._wait)
                if head > self._projector.applied and not self._stopped.is_set():
                    self._projector.catch_up(head)
                self.error = None
            except HistoryLostError as exc:
                # the changes this projection needs next are pruned: only a restart (which
                # loads the tables) brings it up to date
                if self.error is None:
                    logger.error("cannot follow the change log any more (%s); restart", exc)
                self.error = exc
                self._stopped.wait(5.0)
            except Exception as exc:
                if self.error is None:
                    logger.exception("following the change log failed; retrying")
                self.error = exc
                self._stopped.wait(1.0)
