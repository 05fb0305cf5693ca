"""Policy: the one place where findings become decisions."""

from detector.policy.config import Policy, Rule, load_policy, parse_duration
from detector.policy.engine import PolicyOutcome, decide

__all__ = ["Policy", "PolicyOutcome", "Rule", "decide", "load_policy", "parse_duration"]
