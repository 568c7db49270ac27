"""Which generated pictures a translated answer hands to the client, and so bills.

Behind a translation or a provider adapter the relay sees each picture as a canonical
part or event before the client does. A picture goes out only when the request asked for
pictures (as on pass-through, only those are billed) and while the answer stays within
its picture budget: a channel that sends many or huge pictures cannot make the relay
keep (the Responses stream repeats every item in its last event) or bill more than that.
"""

from __future__ import annotations

from relay.translate import canonical as c

# Per answer: no provider returns more pictures than this to one request today, and the
# base64 of all of them together stays within what a whole answer may weigh.
MAX_IMAGES = 16
MAX_IMAGE_CHARS = 48 * 1024 * 1024


class ImageGate:
    """Admits the pictures of one answer; ``delivered`` counts those let through."""

    __slots__ = ("allowed", "chars", "delivered")

    def __init__(self, request: c.Request) -> None:
        allowed = MAX_IMAGES if request.image_output else 0
        # Each picture costs at least an output token, and the hold counts one per token:
        # never deliver (and bill) more pictures than the client's own cap held for.
        if isinstance(request.max_output_tokens, int):
            allowed = min(allowed, request.max_output_tokens)
        self.allowed = allowed
        self.chars = 0
        self.delivered = 0

    def admit(self, image: c.GeneratedImage) -> bool:
        size = len(image.data)
        if self.delivered >= self.allowed or self.chars + size > MAX_IMAGE_CHARS:
            return False
        self.delivered += 1
        self.chars += size
        return True

    def answer(self, response: c.Response) -> None:
        """Drop from a whole answer the pictures that may not go out."""
        if any(isinstance(p, c.GeneratedImage) for p in response.parts):
            response.parts = [
                p for p in response.parts if not isinstance(p, c.GeneratedImage) or self.admit(p)
            ]

    def events(self, events: list[c.Event]) -> list[c.Event]:
        """``events`` without the pictures that may not go out."""
        if not any(isinstance(e, c.ImageGenerated) for e in events):
            return events
        return [e for e in events if not isinstance(e, c.ImageGenerated) or self.admit(e.image)]
