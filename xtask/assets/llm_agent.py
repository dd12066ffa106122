"""The demo's LLM agent: unmodified code using the official `openai` package.

It holds only a placeholder key; the gateway injects the real one. It trusts the system roots
plus the node CA because `react-gateway exec` points SSL_CERT_FILE at that bundle.
"""
import sys

import openai

base_url = sys.argv[1]
client = openai.OpenAI(base_url=base_url, api_key="sk-placeholder-the-agent-never-has-the-key")
reply = client.chat.completions.create(
    model="mock-gpt",
    messages=[{"role": "user", "content": "What is the weather in Paris?"}],
)
print(f"  agent: {reply.choices[0].message.content}")
stream = client.chat.completions.create(
    model="mock-gpt",
    messages=[{"role": "user", "content": "Stream me a short answer"}],
    stream=True,
)
print("  agent (streamed): " + "".join(c.choices[0].delta.content or "" for c in stream))
