"""A streamed reply put back together: the chat.completion that its chat.completion.chunk
objects add up to, for the job record (polling clients and send_task callers get the
whole reply, as for a reply that was not streamed)."""


class Assembly:
    def __init__(self):
        self.head: dict = {}  # id, created, model: from the first chunk
        self.role = "assistant"
        self.parts: list[str] = []
        self.finish_reason: str | None = None
        self.usage: dict | None = None

    def add(self, chunk: dict) -> None:
        if not self.head:
            self.head = {key: chunk[key] for key in ("id", "created", "model") if key in chunk}
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            self.role = delta.get("role") or self.role
            self.parts.append(delta.get("content") or "")
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
        self.usage = chunk.get("usage") or self.usage

    def completion(self) -> dict:
        message = {"role": self.role, "content": "".join(self.parts)}
        reply = {**self.head, "object": "chat.completion",
                 "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason or "stop"}]}
        return reply | ({"usage": self.usage} if self.usage else {})
