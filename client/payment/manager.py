"""The payment manager: one generic payment service over every installed module (paper 3.6).

Payer side: ``instruments``, ``choose`` (negotiation), ``pay`` (a session that produces the
messages for the payee). Payee side: ``offer``, ``expect`` (the terms it set), ``desk`` (answers
the payer's messages), ``refund``. Both: ``status``. Messages travel as envelopes
``{"module", "payment_id", "body"}`` over any carrier: in process, the payee link (``link.py``),
or the transfer layer, which treats a payment as one item (``item.py``).

The payee never takes terms from the payer: it answers only payments it ``expect``-ed, with the
terms it set, so a payer cannot change the amount by editing a message.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..support.db import commit_held_groups, from_json, held_group_ended, to_json
from ..support.shapes import Shape
from .errors import ModuleNotFound, NegotiationError, PaymentError, ProtocolError
from .model import Acceptance, Choice, ExchangeProperties, Instrument, Record, Status, Terms
from .module import Flow, PartyContext, PaymentModule, Step
from .negotiation import Requirements, check_choice, negotiate
from .registry import discover
from .sessions import MemorySessions, PayeeState, SessionStore
from .store import RecordStore
from .wire import read

if TYPE_CHECKING:
    from ..support.db import Transaction

#: no payment system here needs more than 4; bounds a confused peer (each step past it is refused before the
#: module's, so junk asks no device). One exception on the payee's side: a message that proves value the
#: payer already gave (a card's signed debit proof for this payment's request, ``proves_payment`` of the
#: module's payee flow) is taken however many steps came before; see PaymentManager._step
MAX_ROUNDS = 16


NO_REQUIREMENTS = Requirements()      # the default: any module the two sides share
#: a step's key, the text a repeated message is known by (stored with the session: its form must not change):
#: ``json.dumps(body, sort_keys=True, separators=(",", ":"))``, with one encoder, not one made per call
_STEP_KEY = json.JSONEncoder(sort_keys=True, separators=(",", ":"))

M = TypeVar("M")
AFTER_GROUP_WAIT = 10.0      # seconds a step waits for the commit of the group the last step went into


class Envelope(Shape, frozen=True):
    """How every payment message travels: which payment, which module, and the module's own message
    (which the module reads with its own shapes, ``module.receive``)."""

    payment_id: str
    module: str
    body: dict[str, Any]


# what a payee does when a step's outcome is known, before the step is saved: given the record as the step
# leaves it, a write to commit in the step's own transaction, or None (see PaymentManager.handle_step)
Settle = Callable[[Record], "Callable[[Transaction], None] | None"]


@dataclass(frozen=True)
class Handled:
    """One payer's message answered (:meth:`PaymentManager.handle_step`)."""

    reply: dict[str, Any] | None        # the envelope to answer with
    record: Record | None               # the payee's record as this step saved it; None: a repeated message
    settled: bool                       # the payee's own write (``settle``) committed with the step


class PaymentManager:
    """One party's payment service. ``modules`` overrides discovery (name -> class) for tests.

    ``store`` keeps the records (the payer's and the payee's); ``sessions`` the payee's sessions, which
    save the payee's record into their own ``records`` with each step: the two must be one place (the
    party's database), or a refund would update a record the next step or read does not see. Without
    ``store`` the sessions' records are the store; without ``sessions`` they live in this process."""

    def __init__(self, context: PartyContext, *, preferences: Sequence[str] = (), store: RecordStore | None = None,
                 modules: Mapping[str, type] | None = None, only: Iterable[str] | None = None,
                 sessions: SessionStore | None = None) -> None:
        self.ctx = context
        self.preferences = list(preferences)
        if sessions is None:
            self.store = store or RecordStore()
            self.sessions: SessionStore = MemorySessions(self.store)
        else:
            self.store, self.sessions = store or sessions.records, sessions
            if not self.store.same_place(sessions.records):
                raise PaymentError("the payment records and the payee's sessions must be kept in one database "
                                   "(pass store=RecordStore(db=...) of the sessions' database, or no store)")
        self.problems: dict[str, str] = {}
        self.modules: dict[str, PaymentModule] = {}
        classes: dict[str, type] = dict(modules) if modules is not None else {}
        if modules is None:
            for found in discover():
                if found.cls is None:
                    self.problems[found.name] = found.problem
                else:
                    classes[found.name] = found.cls
        wanted = set(only) if only is not None else None
        for name, cls in classes.items():
            if wanted is not None and name not in wanted:
                continue
            try:
                self.modules[name] = cls(context)
            except Exception as e:       # a module that cannot start here offers nothing; say why
                self.problems[name] = f"{type(e).__name__}: {e}"
        self._lock = threading.Lock()
        self._steps: dict[str, threading.Lock] = {}        # one step at a time per payment in this process
        # a payment whose last step's save went into a commit group not committed yet: (the thread, the
        # group's end), for the next holder of another thread to wait for (_stepping)
        self._after: dict[str, tuple[int, threading.Event]] = {}

    # ---- what is here ------------------------------------------------------------------------
    def module(self, name: str) -> PaymentModule:
        try:
            return self.modules[name]
        except KeyError:
            why = self.problems.get(name)
            raise ModuleNotFound(f"the payment module {name!r} is not available here"
                                 + (f" ({why})" if why else f"; installed: {', '.join(sorted(self.modules)) or 'none'}")
                                 ) from None

    def module_as(self, name: str, kind: type[M]) -> M:
        """The module ``name`` where the caller needs its own operations (a purse's load, a wallet's coins)."""
        module = self.module(name)
        if not isinstance(module, kind):
            raise ModuleNotFound(f"the payment module {name!r} here is {type(module).__name__}, not {kind.__name__}")
        return module

    def properties(self) -> dict[str, ExchangeProperties]:
        return {n: m.properties for n, m in self.modules.items()}

    def describe(self) -> list[dict[str, Any]]:
        return [{"name": n, "model": m.model.value, "properties": m.properties.as_dict(), "class":
                 f"{type(m).__module__}:{type(m).__qualname__}"} for n, m in sorted(self.modules.items())]

    # ---- payer side --------------------------------------------------------------------------
    def instruments(self) -> list[Instrument]:
        out: list[Instrument] = []
        for name, m in sorted(self.modules.items()):
            try:
                out.extend(m.instruments())
            except PaymentError as e:
                self.problems[name] = str(e)
        return out

    def choose(self, terms: Terms, offer: Sequence[Acceptance], require: Requirements = NO_REQUIREMENTS) -> Choice:
        return negotiate(terms, offer, self.instruments(), self.properties(), self.preferences, require)

    def pay(self, terms: Terms, choice: Choice) -> PayerSession:
        module = self.module(choice.module)
        flow = module.payer_flow(terms, choice.instrument, choice.params)
        record = Record(terms.payment_id, choice.module, "payer", terms, Status.PENDING, choice.instrument.ref)
        self.store.put(record)
        return PayerSession(self, record, flow)

    # ---- payee side --------------------------------------------------------------------------
    def offer(self) -> list[Acceptance]:
        out = []
        for _name, m in sorted(self.modules.items()):
            acc = m.acceptance()
            if acc is not None:
                out.append(acc)
        rank = {m: i for i, m in enumerate(self.preferences)}
        return sorted(out, key=lambda a: (rank.get(a.module, len(rank)) + a.preference, a.module))

    def expect(self, terms: Terms, route: Mapping[str, Any] | None = None) -> None:
        """Register terms this payee set, so that payments for them are answered. ``route``: per module,
        what its payee flow needs to know of this payee's choice of device (``{"card-purse": {"psam": id}}``)."""
        self.sessions.expect(terms, dict(route or {}))

    def admit(self, envelope: Any, routes: Mapping[str, Any] | None = None) -> None:
        """Room for this payer's message at the module's device, or a PaymentError now (see
        ``BaseModule.admit``); call it before the message is handled, and wait (without holding a
        thread) to ask again. Malformed envelopes pass: handle() refuses them with the precise message.
        ``routes``: the route this payee gave ``expect`` for the payment, when the caller holds it (else it
        is read from the payment's session)."""
        if not isinstance(envelope, dict):
            return
        pid, name, body = envelope.get("payment_id"), envelope.get("module"), envelope.get("body")
        if isinstance(pid, str) and isinstance(name, str) and isinstance(body, dict) and name in self.modules:
            admit = getattr(self.modules[name], "admit", None)        # modules from elsewhere may not have it
            if admit is not None:
                if routes is None and body.get("kind") == "hello":
                    st = self.sessions.get(pid)
                    routes = st.route if st is not None else {}
                route = (routes or {}).get(name) or {}
                admit(pid, body, **route) if route else admit(pid, body)

    def unadmit(self, envelope: Any) -> None:
        """Give back the room :meth:`admit` took for this message at the module's device, when the message was
        refused before the module's step ran (a module without the notion: nothing to do)."""
        if not isinstance(envelope, dict):
            return
        pid, name, body = envelope.get("payment_id"), envelope.get("module"), envelope.get("body")
        if isinstance(pid, str) and isinstance(name, str) and isinstance(body, dict) and name in self.modules:
            unadmit = getattr(self.modules[name], "unadmit", None)
            if unadmit is not None:
                unadmit(pid, body)

    def _step_lock(self, pid: str) -> threading.Lock:
        with self._lock:
            lock = self._steps.get(pid)
            if lock is None:
                if len(self._steps) > 4096:
                    self._steps = {k: v for k, v in self._steps.items() if v.locked()}
                lock = self._steps[pid] = threading.Lock()
            return lock

    @contextmanager
    def _stepping(self, pid: str) -> Iterator[None]:
        """The payment's step lock, held across its step and the step's save.

        Commit groups (``Database.grouped``, the shop's event loop) change two things. When another thread
        holds the lock, this thread's groups are committed before it waits: the holder may be waiting for
        their write lock to save its step (a deadlock until the busy timeout otherwise). And a holder whose
        save went into its group, not yet committed, hands the group's end to the next holder of another
        thread, who waits for it before reading the session: it would read the session as last committed and
        ask the device for the step again (second review of 2026-12-07)."""
        lock = self._step_lock(pid)
        if not lock.acquire(blocking=False):
            commit_held_groups()
            lock.acquire()
        try:
            with self._lock:
                after = self._after.pop(pid, None)
            if after is not None and after[0] != threading.get_ident():
                after[1].wait(AFTER_GROUP_WAIT)     # the last holder's loop commits at its next turn
            yield
        finally:
            ended = held_group_ended()
            if ended is not None:
                with self._lock:
                    self._after[pid] = (threading.get_ident(), ended)
                    if len(self._after) > 4096:
                        self._after = {k: v for k, v in self._after.items() if not v[1].is_set()}
            lock.release()

    def handle(self, envelope: dict[str, Any]) -> dict[str, Any] | None:
        """Answer one envelope from a payer (the payee link and the transfer layer call this).

        The session is read from the session store, stepped, and saved with its answer before the
        answer is returned: a payer whose answer was lost sends the same message again and gets the
        same answer without the flow running twice (found by ``semper chaos``: a dropped answer to a SET
        capture made the buyer's client report "nothing was paid" while the money had moved), also
        from another process of the payee or after a restart."""
        return self.handle_step(envelope).reply

    def handle_step(self, envelope: dict[str, Any], *, settle: Settle | None = None) -> Handled:
        """:meth:`handle`, saying also what the step left in the payee's record, and with the payee's own
        write committed in the step's transaction: ``settle(record)`` is called after the module's
        step and before its save, and the write it returns (if any) runs in the transaction that
        saves the session and the record (where the session store is :attr:`~SessionStore.transactional`;
        elsewhere ``settle`` is not called). So the shop's deal, paid, is committed with the payment's
        last step or not at all (docs/performance.md). ``settled`` says whether it was."""
        env = read(envelope, Envelope, "the payment message")
        pid, name, body = env.payment_id, env.module, env.body
        key = _STEP_KEY.encode(body)
        if not getattr(self.sessions, "transactional", False):
            settle = None
        with self._stepping(pid):
            for _attempt in range(3):
                st, known = self.sessions.get_with_record(pid, "payee")
                if st is None:
                    raise ProtocolError(f"no payment {pid} is expected here")
                if st.last_in == key:
                    return Handled(self._envelope(pid, name, st.last_out), None, False)
                reply, saved, record, settled = self._step(st, known, name, body, key, settle)
                if saved:
                    return Handled(None if reply is None else {"payment_id": pid, "module": name, "body": reply},
                                   record, settled)
        raise ProtocolError(f"payment {pid} keeps changing under this message (another process of the payee is "
                            "taking it); send it again")

    def starts_early(self, envelope: Any) -> bool:
        """Whether this payer's message names a module here whose first message may come before the payee
        set its terms (``ExchangeProperties.starts_early``): the payee then takes it with the order."""
        name = envelope.get("module") if isinstance(envelope, dict) else None
        module = self.modules.get(name) if isinstance(name, str) else None
        return module is not None and module.properties.starts_early and bool(
            getattr(self.sessions, "transactional", False))

    def handle_first(self, terms: Terms, route: Mapping[str, Any] | None, envelope: dict[str, Any], *,
                     settle: Settle | None = None) -> Handled | None:
        """The payer's first message, which came before the payee set ``terms`` (with the order: see
        :meth:`starts_early`): the terms expected, the module's first step taken and its session, the
        payee's record and ``settle``'s write committed in *one* transaction (no :meth:`expect` before,
        no read of the session: docs/performance.md). None when the payment's session exists already (the
        same message again, or another process took it first): the caller goes on with
        :meth:`handle_step`, which answers a repeated message as before. A refused step stores nothing
        here and raises: the caller commits its terms alone, and the payer's message, sent again in the
        ordinary way, is refused and recorded there."""
        env = read(envelope, Envelope, "the payment message")
        pid, name, body = env.payment_id, env.module, env.body
        if pid != terms.payment_id:
            raise ProtocolError(f"the payment message is for payment {pid}, not {terms.payment_id}")
        if not self.starts_early(envelope):
            raise ProtocolError(f"a {name} payment cannot start before its terms are set")
        key = _STEP_KEY.encode(body)
        with self._stepping(pid):
            st = PayeeState(terms, dict(route or {}))
            reply, saved, record, settled = self._step(st, None, name, body, key, settle, create=True)
        if not saved:
            return None
        return Handled(None if reply is None else {"payment_id": pid, "module": name, "body": reply}, record, settled)

    def _accepts(self, terms: Terms, name: str) -> None:
        """``check_choice(terms, self.offer(), name)``: asked of the named module alone when its acceptance
        takes the payment (each first step asked every module's and sorted them, for one answer); anything
        else (it accepts none, not this currency) is asked of the whole offer as before."""
        module = self.modules.get(name)
        acc = module.acceptance() if module is not None else None
        try:
            check_choice(terms, [acc] if acc is not None else [], name)
        except NegotiationError:
            check_choice(terms, self.offer(), name)         # else the whole offer decides, as before

    @staticmethod
    def _new_flow(module: PaymentModule, st: PayeeState, name: str) -> Flow:
        route = st.route.get(name) or {}
        return module.payee_flow(st.terms, **route) if route else module.payee_flow(st.terms)

    @staticmethod
    def _envelope(pid: str, name: str, out: str | None) -> dict[str, Any] | None:
        reply = None if out is None else from_json(out)
        return None if reply is None else {"payment_id": pid, "module": name, "body": reply}

    def _step(self, st: PayeeState, known: Record | None, name: str, body: dict[str, Any], key: str,
              settle: Settle | None, *, create: bool = False) -> tuple[dict[str, Any] | None, bool, Record, bool]:
        """One step of the payee's flow, saved with its record (``create``: the session is new, stored by
        ``SessionStore.create``; a refused step then stores nothing)."""
        terms = st.terms
        fresh = st.module is None
        if fresh:
            self._accepts(terms, name)
            module = self.module(name)
            st.module = name
            flow = self._new_flow(module, st, name)
        elif st.module != name:
            raise ProtocolError(f"payment {terms.payment_id} is being made with {st.module}, not {name}")
        else:
            if st.done:
                raise ProtocolError(f"payment {terms.payment_id} is finished; no more messages")
            module = self.module(name)
            resume = getattr(module, "resume_payee_flow", None)
            if st.flow is not None and resume is not None:
                flow = resume(terms, st.flow)
            else:
                flow = self._new_flow(module, st, name)
        # the record as the store holds it (sessions keep none), read with the session: a later step sees
        # what the earlier one saved
        record = None if fresh else known
        record = record or Record(terms.payment_id, name, "payee", terms, Status.PENDING)
        st.rounds += 1
        if st.rounds > MAX_ROUNDS and not self._proves_payment(flow, body):
            raise ProtocolError(f"payment {terms.payment_id} took more than {MAX_ROUNDS} rounds; stopped (a payer "
                                f"that has paid, e.g. a card that debited itself, may send its proof again later)")
        snapshot = getattr(flow, "snapshot", None)
        try:
            step = flow.step(body)
        except PaymentError:
            if create:
                raise
            record.status = Status.FAILED if record.status is Status.PENDING else record.status
            st.flow = snapshot() if snapshot is not None else None
            self.sessions.save(st, record)
            raise
        if step.status is not None:
            record.status = step.status
        if step.evidence:
            record.evidence.update(step.evidence)
        st.flow = snapshot() if snapshot is not None else None
        st.last_in, st.last_out, st.done = key, to_json(step.message), step.done
        also = settle(record) if settle is not None else None
        store = self.sessions.create if create else self.sessions.save
        saved = store(st, record, also=also)
        return step.message, saved, record, saved and also is not None

    @staticmethod
    def _proves_payment(flow: Flow, body: dict[str, Any]) -> bool:
        """Whether ``body`` proves value the payer has already given for this payment (the payee flow's
        ``proves_payment``; a module without one proves nothing so): such a message is taken past
        :data:`MAX_ROUNDS`. Why: a card debits itself when it answers the PSAM's challenge, and every
        refused message counts a round (the payee's session is saved with it). A proof refused 15 times
        (the PSAM's reader failing, its process restarting, junk from whoever knows the payment) was then
        refused for good, before the module's step: the buyer had paid, got nothing, and the amount
        stayed in the purse float. Anything else past MAX_ROUNDS is still refused here, before any
        device is asked; only the card can make a message that passes (it signs it)."""
        proves = getattr(flow, "proves_payment", None)
        return proves is not None and bool(proves(body))

    # ---- both --------------------------------------------------------------------------------
    def record(self, payment_id: str, role: str | None = None) -> Record:
        """The record as the store holds it: the payee's sessions keep no copy of their own."""
        rec = self.store.get(payment_id, role)
        if rec is None:
            raise PaymentError(f"no payment {payment_id} is recorded here")
        return rec

    def status(self, payment_id: str, role: str | None = None) -> Record:
        rec = self.record(payment_id, role)
        new = self.module(rec.module).status(rec)
        if new != rec.status:
            rec.status = new
            self.store.put(rec)
        return rec

    def refund(self, payment_id: str, amount: int | None = None) -> Record:
        rec = self.record(payment_id, "payee")
        if rec.status in (Status.PENDING, Status.FAILED, Status.BOUNCED):
            raise PaymentError(f"payment {payment_id} is {rec.status.value}; only a completed payment can be refunded")
        left = rec.terms.amount - rec.refunded
        amount = left if amount is None else amount
        if not 0 < amount <= left:
            raise PaymentError(f"a refund must be 1 to {left} minor units (paid {rec.terms.amount}, "
                               f"refunded {rec.refunded})")
        rec = self.module(rec.module).refund(rec, amount)
        self.store.put(rec)
        return rec


class _Session:
    def __init__(self, manager: PaymentManager, record: Record, flow: Flow) -> None:
        self.manager = manager
        self.record = record
        self.flow = flow
        self.done = False
        self.rounds = 0

    def _apply(self, step: Step) -> None:
        if step.status is not None:
            self.record.status = step.status
        if step.evidence:
            self.record.evidence.update(step.evidence)
        self.done = step.done
        self.manager.store.put(self.record)

    def step(self, incoming: dict[str, Any] | None) -> dict[str, Any] | None:
        if self.done:
            raise ProtocolError(f"payment {self.record.payment_id} is finished; no more messages")
        self.rounds += 1
        if self.rounds > MAX_ROUNDS:
            raise ProtocolError(f"payment {self.record.payment_id} took more than {MAX_ROUNDS} rounds; stopped")
        try:
            step = self.flow.step(incoming)
        except PaymentError:
            self.record.status = Status.FAILED if self.record.status is Status.PENDING else self.record.status
            self.manager.store.put(self.record)
            raise
        self._apply(step)
        return step.message


class PayerSession(_Session):
    """The payer's side of one payment: ``start()``, then ``step(reply)`` until ``done``."""

    def start(self) -> dict[str, Any]:
        body = self.step(None)
        if body is None:
            raise ProtocolError("the payer's flow produced no first message")
        return self.envelope(body)

    def envelope(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"payment_id": self.record.payment_id, "module": self.record.module, "body": body}


class PayeeLink(Protocol):
    """How the payer's messages reach the payee: ``send(envelope) -> reply envelope or None``."""

    def send(self, envelope: dict[str, Any]) -> dict[str, Any] | None: ...


@dataclass
class LocalPayee:
    """The payee's manager in this process (tests, the demo)."""

    manager: PaymentManager

    def send(self, envelope: dict[str, Any]) -> dict[str, Any] | None:
        return self.manager.handle(envelope)


def run_payment(session: PayerSession, link: PayeeLink, *, first: dict[str, Any] | None = None,
                reply: dict[str, Any] | None = None) -> Record:
    """Drive a payer session to the end over ``link``; the payer's record is returned. ``first``: the
    session was started and this is its first message (sent with the order, ``ExchangeProperties.starts_early``);
    ``reply``: the payee's answer to it, when it came with the order's answer (else ``first`` is sent)."""
    out: dict[str, Any] | None = first if first is not None else session.start()
    answered = reply if first is not None else None
    while out is not None:
        got = answered if answered is not None else link.send(out)
        answered = None
        if got is None:
            break
        if got.get("payment_id") != session.record.payment_id or not isinstance(got.get("body"), dict):
            raise ProtocolError("the payee answered for another payment, or without a body")
        body = session.step(got["body"])
        out = None if body is None else session.envelope(body)
    if not session.done:
        raise ProtocolError(f"the payee stopped answering payment {session.record.payment_id} before it finished")
    return session.record


def pay(payer: PaymentManager, terms: Terms, offer: Sequence[Acceptance], link: PayeeLink,
        require: Requirements = NO_REQUIREMENTS) -> Record:
    """Negotiate and pay in one call (the common case)."""
    try:
        choice = payer.choose(terms, offer, require)
    except NegotiationError:
        raise
    return run_payment(payer.pay(terms, choice), link)


__all__ = ["PaymentManager", "PayerSession", "LocalPayee", "PayeeLink", "run_payment", "pay",
           "Path"]
