"""The one facade the front ends (http/, cli.py) use, one module per use case:

- `runtime`: the actor tree and the config it runs (start, stop, reload, readiness, metrics),
  the integration lookup, the one renderer cache, asking an allocator;
- `facade`: `Service`, the runtime composed with the parts below under the names the front ends
  call, and `start`;
- `addin`: the add-in's single-use VMRs (a typed `Reservation`) and personal VMRs;
- `sign_ins`: add-in tokens, the user, admin, organizer and delegated service-account sign-ins;
- `admin` + `views`: the `Admin` port, served online by the actors and offline by the files,
  and the JSON views the admin sees;
- `organizer`: organizer self-service;
- `policy`, `graph_push`: Pexip's policy answers and Graph's change notifications;
- `offline`: check-online and recover, beside a stopped service;
- `storage`: moving the records between the file store and the shared database;
- `spooled`: meeting requests made by hand into a spool, and what it sent back.

Front ends import this package and core modules, never an actor or a gateway, so what an actor
or a backend looks like can change without touching them."""

from vmrsched.service.addin import Reservation
from vmrsched.service.admin import Admin, OfflineAdmin, OnlineAdmin
from vmrsched.service.facade import ReloadResult, Service, start
from vmrsched.service.offline import Recovered, check_online, recover_integration
from vmrsched.service.organizer import Organizer
from vmrsched.service.sign_ins import SignInRefused
from vmrsched.service.spooled import drop_invite, spool_replies

__all__ = [
    "Admin",
    "OfflineAdmin",
    "OnlineAdmin",
    "Organizer",
    "Recovered",
    "ReloadResult",
    "Reservation",
    "Service",
    "SignInRefused",
    "check_online",
    "drop_invite",
    "recover_integration",
    "spool_replies",
    "start",
]
