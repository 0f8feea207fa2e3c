"""Discord: each tenant's own bot generates images with `/imagine`, billed like any API job.

The flow: Discord POSTs an interaction to the application's endpoint (apis.InteractionsApi) ->
services/interactions checks its signature, age and novelty, and answers within Discord's 3 s
(a deferred reply for a job, at once for the rest) -> services/imagine turns a command or a
button into an ordinary job of the tenant (same quotas, admission and usage) with a reply that
follows it -> the lifecycle's announcements mark the reply out of date (services/replies) ->
the discord queue's workers edit it with progress and, at the end, the image (services/sync,
through the one Discord client) or, past the interaction token's 15 minutes, post it to the
channel with the bot token.
"""
