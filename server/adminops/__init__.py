"""The admin operations, one module per concern, all registered in one table.

``base`` holds :class:`~server.adminops.base.ApiError`, the op registry and the shared helpers;
``fleet`` (computers, task servers, inventory, groups, filters), ``catalog`` (tasks, jobs, types,
reports, items, folders, policies), ``runs`` (runs, log, messages, stats, backup) and ``trust``
(keys, tokens, admins, audit, whoami) each import only ``base``. ``server.admin_api`` imports
them all, so every op registers, and answers requests through ``handle``.
"""
