"""The agent, and the asyncio plumbing every role shares (``link``, ``runner``, ``logs``).

The agent depends only on ``protocol``; the Task Server and the Notification Server
reuse its connection wrapper and its script runner, so there is one implementation of each.
"""

__version__ = "0.1.0"
