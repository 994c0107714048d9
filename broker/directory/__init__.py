"""Who is in the region and what they may do: the live, signed directory and its policy
(``service``), enrolment, key rotation, lifecycle (suspend, revoke), subscriptions,
administrators and the adopted policy sets. Every change is audited through the registry.
"""
