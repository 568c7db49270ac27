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


def image_limit(output_cap: int | None, choices: int = 1) -> int:
    """The most pictures one answer may deliver or bill: MAX_IMAGES a choice, and never
    more than the output tokens the client capped it at. The hold counts one picture per
    output token it holds for (each picture costs at least one), so within this limit a
    channel that sends more cannot charge a balance beyond what was held."""
    per_choice = MAX_IMAGES if output_cap is None else max(min(MAX_IMAGES, output_cap), 0)
    return per_choice * choices


class ImageGate:
    """Admits the pictures of one answer; ``delivered`` counts those let through."""

    __slots__ = ("allowed", "chars", "delivered")

    def __init__(self, request: c.Request) -> None:
        cap = request.max_output_tokens
        cap = cap if isinstance(cap, int) and not isinstance(cap, bool) else None
        self.allowed = image_limit(cap) if request.image_output else 0
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
        for event in events:  # a loop, not any(): this runs for every chunk of a stream
            if type(event) is c.ImageGenerated:
                break
        else:
            return events
        return [e for e in events if not isinstance(e, c.ImageGenerated) or self.admit(e.image)]
