"""Feature handlers: importing this package registers every command and flow.

Adding a feature: one module here, one import line below, its catalog strings, a test.
"""

from handlers import (  # noqa: F401
    announce,
    bridge,
    core,
    data_rights,
    fund,
    news,
    registration,
    reminders,
    safety,
    tips,
)
