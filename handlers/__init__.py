"""Feature handlers: importing this package registers every command and flow.

Adding a feature: one module here, one import line below, its catalog strings, a test.
"""

from handlers import core, fund, news, registration, safety, tips  # noqa: F401
