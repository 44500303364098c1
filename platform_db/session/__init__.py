"""What a service uses at run time: settings, engines and pools, `Database`, the tenant
hook, `find_many` and search. Nothing here connects at import time."""
