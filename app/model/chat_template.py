"""DeepSeek's chat format as a Jinja chat template, used by the built-in model.

Real checkpoints bring their own template in tokenizer_config.json; this one follows DeepSeek-R1's format:
`<｜begin▁of▁sentence｜>{system}<｜User｜>{user}<｜Assistant｜>{answer}<｜end▁of▁sentence｜>`, reasoning stripped
from earlier assistant turns; earlier tool calls and their results in DeepSeek-V3's tool format (tool_format.py).
`<think>\\n` opens the answer only when the request asks for thinking
(`chat_template_kwargs: {"thinking": true}`), so the built-in model's random text lands in `content` by default.
"""

DEEPSEEK_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- set ns = namespace(system='', in_outputs=false) -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{%- set ns.system = ns.system + message['content'] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{{ ns.system }}"
    "{%- for message in messages -%}"
    # a run of tool results ends before the next message that is not one
    "{%- if ns.in_outputs and message['role'] != 'tool' -%}"
    "{{ '<｜tool▁outputs▁end｜>' }}{%- set ns.in_outputs = false -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{ '<｜User｜>' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- set content = message['content'] or '' -%}"
    "{%- if '</think>' in content -%}{%- set content = content.split('</think>')[-1].lstrip() -%}{%- endif -%}"
    "{{ '<｜Assistant｜>' + content }}"
    "{%- if message['tool_calls'] -%}"
    "{{ '<｜tool▁calls▁begin｜>' }}"
    "{%- for call in message['tool_calls'] -%}"
    "{%- if not loop.first -%}{{ '\\n' }}{%- endif -%}"
    "{{ '<｜tool▁call▁begin｜>' + call['type'] + '<｜tool▁sep｜>' + call['function']['name'] }}"
    "{{ '\\n```json\\n' + call['function']['arguments'] + '\\n```<｜tool▁call▁end｜>' }}"
    "{%- endfor -%}"
    "{{ '<｜tool▁calls▁end｜>' }}"
    "{%- endif -%}"
    "{{ '<｜end▁of▁sentence｜>' }}"
    "{%- elif message['role'] == 'tool' -%}"
    "{%- if ns.in_outputs -%}{{ '\\n' }}{%- else -%}{{ '<｜tool▁outputs▁begin｜>' }}{%- endif -%}"
    "{%- set ns.in_outputs = true -%}"
    "{{ '<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if ns.in_outputs -%}{{ '<｜tool▁outputs▁end｜>' }}{%- endif -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<｜Assistant｜>' }}{%- if thinking is defined and thinking -%}{{ '<think>\\n' }}{%- endif -%}"
    "{%- endif -%}"
)
