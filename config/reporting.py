"""Error reports that carry no secret: Django's exception reporter filter, tightened.

Django hides settings and request headers whose names look sensitive, but shows every
local variable of every frame unless a function is decorated with ``sensitive_variables``.
Tollgate's services hold API keys, access tokens and upstream secrets in locals, so this
filter also hides locals with a sensitive name and any value that contains something shaped
like a credential, and it does so with DEBUG on as well.
"""

from __future__ import annotations

import re
from typing import Any

from django.template.defaultfilters import pprint
from django.utils.regex_helper import _lazy_re_compile
from django.views.debug import SafeExceptionReporterFilter

# Names of locals, POST fields, settings and headers whose values are never shown.
SENSITIVE_NAMES = _lazy_re_compile(
    "API|AUTH|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|CIPHER|DIGEST|CREDENTIAL|PLAIN|ROUTE",
    flags=re.I,
)
# Values shaped like a relay key, an access token or a provider key, wherever they appear.
CREDENTIAL = re.compile(r"(sk-[A-Za-z0-9_\-]{6,}|tg-pat-[A-Za-z0-9_\-]{6,}|Bearer\s+\S+)")


class _Shown(str):
    """Text the report shows as it is (not quoted again by ``pprint``)."""

    def __repr__(self) -> str:
        return str(self)


class SecretScrubbingFilter(SafeExceptionReporterFilter):
    cleansed_substitute = "********************"
    hidden_settings = SENSITIVE_NAMES

    def is_active(self, request: Any) -> bool:
        return True  # with DEBUG on too: a debug page can end up in a screenshot or a ticket

    def get_post_parameters(self, request: Any) -> Any:
        if request is None:
            return {}
        cleansed = request.POST.copy()
        for name in cleansed:
            if SENSITIVE_NAMES.search(name):
                cleansed[name] = self.cleansed_substitute
        return cleansed

    def get_traceback_frame_variables(self, request: Any, tb_frame: Any) -> Any:
        shown = []
        for name, value in super().get_traceback_frame_variables(request, tb_frame):
            if SENSITIVE_NAMES.search(name):
                value = self.cleansed_substitute
            else:
                text = pprint(value)
                if CREDENTIAL.search(text):
                    value = _Shown(CREDENTIAL.sub(self.cleansed_substitute, text))
            shown.append((name, value))
        return shown
