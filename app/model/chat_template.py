"""DeepSeek's chat format as a Jinja chat template, used by the built-in model.

Real checkpoints bring their own template in tokenizer_config.json; this one follows DeepSeek-R1's format:
`<｜begin▁of▁sentence｜>{system}<｜User｜>{user}<｜Assistant｜>{answer}<｜end▁of▁sentence｜>`, reasoning stripped
from earlier assistant turns. `<think>\\n` opens the answer only when the request asks for thinking
(`chat_template_kwargs: {"thinking": true}`), so the built-in model's random text lands in `content` by default.
"""

DEEPSEEK_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- set ns = namespace(system='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{%- set ns.system = ns.system + message['content'] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{{ ns.system }}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{ '<｜User｜>' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- set content = message['content'] or '' -%}"
    "{%- if '</think>' in content -%}{%- set content = content.split('</think>')[-1].lstrip() -%}{%- endif -%}"
    "{{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<｜Assistant｜>' }}{%- if thinking is defined and thinking -%}{{ '<think>\\n' }}{%- endif -%}"
    "{%- endif -%}"
)
