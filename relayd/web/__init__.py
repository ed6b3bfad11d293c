"""The status page served by [admin]: upstream health, allowance, the queue and its history,
and the settings screens' buttons; server-rendered HTML, no JavaScript."""
