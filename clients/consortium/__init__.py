"""The consortium's own tools: building and signing the manifest, agreeing the schema, coordinating a training.

``secagg consortium`` (:mod:`clients.consortium.cli`): ``schema merge|show``, ``plan``,
``manifest create|sign|combine|verify|show``, ``run`` (the coordinator,
:mod:`clients.consortium.coordinator`) and ``example-data``. The coordinator speaks to the
server's admin API over HTTP only (:class:`clients.consortium.admin.AdminClient`); it never
sees a bank's data, key or update.
"""
