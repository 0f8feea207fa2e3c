"""Discord services, one module per stage of the flow:

- applications: tenants' applications and guild policies, slash-command registration, the
  bot tokens' key rotation;
- interactions: a signed interaction in, the tenant resolved from its application, an answer out;
- imagine: `/imagine` and the buttons: the guild's policy enforced, then a job submitted;
- replies: the lifecycle's announcements mark a job's reply out of date;
- sync: one reply brought up to date with its job (edit, follow-up or channel message).
"""
