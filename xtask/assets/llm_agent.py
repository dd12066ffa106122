"""The demo's LLM agent: unmodified code using the official `openai` package.

It holds only a placeholder key; the gateway injects the real one. It trusts the system roots
plus the node CA because `react-gateway exec` points SSL_CERT_FILE at that bundle. Its prompt
carries an e-mail address and a card number; the mock LLM's streamed answer carries someone
else's. The gateway masks both on the way.
"""
import sys

import openai

base_url = sys.argv[1]
client = openai.OpenAI(base_url=base_url, api_key="sk-placeholder-the-agent-never-has-the-key")
prompt = "Book Paris for jane.doe@example.com and bill card 4111 1111 1111 1111."
print(f"  agent sends:          {prompt}")
reply = client.chat.completions.create(
    model="mock-gpt",
    messages=[{"role": "user", "content": prompt}],
)
print(f"  agent receives:       {reply.choices[0].message.content}")
stream = client.chat.completions.create(
    model="mock-gpt",
    messages=[{"role": "user", "content": "Stream a short answer and leak a contact."}],
    stream=True,
)
print("  agent receives (SSE): " + "".join(c.choices[0].delta.content or "" for c in stream))
