"""route(delivery, policy, state) → Decision. Pure: no I/O, no clock, no randomness."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from gateway.config import Settings
from gateway.model import AUTO_TAG, NO_SENDER_TAG, Decision, Delivery, MailFacts, RoutingState
from gateway.routing.index import RuleIndex
from gateway.routing.rotation import GLOBAL, team_key, turn
from gateway.routing.rules import CompiledRule, check_each, compile_rules


@dataclass(frozen=True)
class Policy:
    """The routing half of the configuration, compiled once per (re)load."""

    rules: tuple[CompiledRule, ...]
    teams: dict[str, tuple[str, ...]]
    round_robin: tuple[str, ...] | None  # None when round-robin is off
    limits: dict[str, int] = field(default_factory=dict)  # agent → max_open, where set
    rule_agent_away: str = "assign"  # or "next", "unassign" (DESIGN §14)
    balanced: frozenset[str] = frozenset()  # the rotation keys that pick the least loaded
    # The agents whose open conversations routing needs: those with a limit, and the
    # members of a balanced rotation.
    counted: tuple[str, ...] = field(init=False, repr=False, compare=False)

    index: RuleIndex = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", RuleIndex.of(self.rules))
        members = {GLOBAL: self.round_robin or ()} | {
            team_key(team): agents for team, agents in self.teams.items()
        }
        wanted = set(self.limits)
        for key in self.balanced:
            wanted.update(members.get(key, ()))
        object.__setattr__(self, "counted", tuple(sorted(wanted)))

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        rotation = settings.round_robin
        return cls(
            rules=compile_rules(settings.rules),
            teams={team.id: tuple(team.agents) for team in settings.teams},
            round_robin=tuple(rotation.agents) if rotation.enabled else None,
            limits={a.id: a.max_open for a in settings.agents if a.max_open is not None},
            rule_agent_away=settings.routing.rule_agent_away,
            balanced=frozenset(
                ([GLOBAL] if rotation.mode == "balanced" else [])
                + [
                    team_key(team.id)
                    for team in settings.teams
                    if (team.mode or rotation.mode) == "balanced"
                ]
            ),
        )


def unable(agent: str, limit: int | None, state: RoutingState) -> str | None:
    """Why `agent` cannot take a conversation now (away, dnd, full at its `limit`), or None."""
    status = state.statuses.get(agent)
    if status is not None and status != "available":
        return status
    if limit is not None and (load := state.open.get(agent, 0)) >= limit:
        return f"full at {load}/{limit}"
    return None


def taken(state: RoutingState, decision: Decision, policy: Policy, at: str) -> RoutingState:
    """The state once `decision` is recorded at `at`, as the store would then give it."""
    agent = decision.assignee
    if agent is None:
        return state
    last_served = state.last_served
    if decision.rotation is not None:
        key, served = decision.rotation
        last_served = {**last_served, key: served}
    open_ = state.open
    if agent in policy.counted:
        open_ = {**open_, agent: open_.get(agent, 0) + 1}
    return replace(
        state,
        last_served=last_served,
        open=open_,
        last_assigned={**state.last_assigned, agent: at},
    )


def taker(queue: str, policy: Policy, state: RoutingState) -> str | None:
    """Who of a queue's rotation (`round_robin` or `team:ID`) would be given a conversation
    now, by its mode; None: nobody of it can take one."""
    if queue == GLOBAL:
        order = policy.round_robin
    else:
        order = policy.teams.get(queue.removeprefix(team_key("")))
    return None if order is None else _pick(order, queue, policy, state)[0]


SKIPS_SAID = 5  # agents a decision names as skipped; the rest are counted


def _pick(
    order: tuple[str, ...], key: str, policy: Policy, state: RoutingState
) -> tuple[str | None, str]:
    """The rotation's pick, and how: whom it passed over on the way and why.

    A rotation looks at agents in turn only until one can take it, so a long
    rotation costs what it skips, not its length; balanced mode weighs them all.
    """
    skipped: list[str] = []  # the first SKIPS_SAID, said with why
    passed = 0
    pick: str | None = None
    how = ""
    if key in policy.balanced:
        # The fewest open; then the longest since last given one (never: first of all);
        # then the configuration's order.
        best: tuple[int, str, int] | None = None
        statuses, loads, limits = state.statuses, state.open, policy.limits
        for place, agent in enumerate(order):
            # unable()'s test, inline: this loop is the whole of balanced mode's cost.
            status, limit, load = statuses.get(agent), limits.get(agent), loads.get(agent, 0)
            if (status is None or status == "available") and (limit is None or load < limit):
                weight = (load, state.last_assigned.get(agent, ""), place)
                if best is None or weight < best:
                    best, pick = weight, agent
                continue
            passed += 1
            if passed <= SKIPS_SAID:
                skipped.append(f"{agent} {unable(agent, limit, state)}")
        if pick is not None:
            how = f" ({pick} has the fewest open, {state.open.get(pick, 0)})"
    else:
        for agent in turn(order, state.last_served.get(key)):
            why = unable(agent, policy.limits.get(agent), state)
            if why is None:
                pick = agent
                break
            passed += 1
            if passed <= SKIPS_SAID:
                skipped.append(f"{agent} {why}")
    if skipped:
        more = f" and {passed - SKIPS_SAID} more" if passed > SKIPS_SAID else ""
        how += f", skipping {', '.join(skipped)}{more}"
    return pick, how


def _unowned(facts: MailFacts) -> str | None:
    """Why nobody is given this mail and no turn is spent on it, or None.

    Automatic mail wants no answer; mail without a sender address (piped garbage)
    cannot have one.
    """
    if facts.auto is not None:
        return f"automatic mail ({facts.auto}) goes to the unassigned queue"
    if facts.sender is None:
        return "mail without a sender address goes to the unassigned queue"
    return None


def _then(passed: list[str], reason: str) -> str:
    """`reason`, after the rules gone on from because their agent was away."""
    return "; ".join([*passed, reason])


def route(
    delivery: Delivery, policy: Policy, state: RoutingState, *, naive: bool = False
) -> Decision:
    """The decision for a new conversation, from the rules the policy's index finds.

    `naive=True` checks every rule one by one instead: the reference that the index is
    tested and benchmarked against, to the same decision.
    """
    facts = delivery.facts
    unowned = _unowned(facts)
    tags = [AUTO_TAG] if facts.auto is not None else []
    if facts.sender is None:
        tags.append(NO_SENDER_TAG)
    hits = check_each(policy.rules, delivery) if naive else policy.index.hits(delivery)
    passed: list[str] = []  # rules whose agent is away, gone on from ("next")
    for rule, matched in hits:
        tags.extend(t for t in rule.tags if t not in tags)
        if rule.assign_to is None:
            continue
        if unowned is not None:  # tags are added whatever else happens; an owner is not
            break
        kind, target = rule.assign_to
        hit = Decision(reason="", tags=tuple(tags), rule=rule.name, matched=matched)
        if kind == "agent":
            # An explicit owner: their load does not count, their absence may.
            absent = unable(target, None, state)
            named = f"rule '{rule.name}' assigns it to {target}"
            if absent is None or policy.rule_agent_away == "assign":
                reason = named if absent is None else f"{named}, who is {absent}"
                return replace(hit, reason=_then(passed, reason), assignee=target, via="rule")
            passed.append(f"{named}, who is {absent}")
            if policy.rule_agent_away == "next":
                continue
            waits = GLOBAL if policy.round_robin is not None else None
            reason = _then(passed[:-1], f"{passed[-1]}: it waits unassigned")
            return replace(hit, reason=reason, waits_for=waits)
        members = policy.teams[target]
        key = team_key(target)
        pick, skipped = _pick(members, key, policy, state)
        if pick is None:
            reason = (
                f"rule '{rule.name}' gives it to team {target}, but no member can take it{skipped}"
            )
            return replace(hit, reason=_then(passed, reason), team=target, waits_for=key)
        reason = (
            f"rule '{rule.name}' gives it to team {target}, whose rotation picks {pick}{skipped}"
        )
        return replace(
            hit,
            reason=_then(passed, reason),
            assignee=pick,
            team=target,
            via="team",
            rotation=(key, pick),
        )
    if unowned is not None:
        return Decision(reason=unowned, tags=tuple(tags))
    order = policy.round_robin
    if order is None:
        reason = _then(passed, "no rule assigns it and round-robin is off")
        return Decision(reason=reason, tags=tuple(tags))
    pick, skipped = _pick(order, GLOBAL, policy, state)
    if pick is None:
        reason = f"no rule assigns it and no agent of the rotation can take it{skipped}"
        return Decision(reason=_then(passed, reason), tags=tuple(tags), waits_for=GLOBAL)
    return Decision(
        reason=_then(passed, f"no rule assigns it; the rotation picks {pick}{skipped}"),
        assignee=pick,
        tags=tuple(tags),
        via="round_robin",
        rotation=(GLOBAL, pick),
    )
