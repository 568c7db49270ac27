"""Translation between API formats through one canonical form (``canonical``).

Each format module offers pure functions both ways: ``request_to_canonical`` /
``request_from_canonical``, ``response_to_canonical`` / ``response_from_canonical``, and a
stream ``Decoder`` (wire events to canonical events) and ``Encoder`` (canonical events to
wire frames). ``chat`` is OpenAI's chat completions, ``responses`` OpenAI's Responses API,
``messages`` Anthropic's Messages API.
"""
