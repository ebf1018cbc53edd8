#!/usr/bin/env python3
"""Writes template-cases.json: chat-template render cases compared against @huggingface/jinja."""
import json

Q = "@qwen3"
weather_tool = {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name, e.g. 北京"},
    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city"]}}}
time_tool = {"type": "function", "function": {"name": "get_time", "description": "Current time.", "parameters": {"type": "object", "properties": {}}}}

cases = [
    {"name": "single-turn system+user gen", "templateFile": Q, "add_generation_prompt": True,
     "messages": [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hello! What's 2+2?"}]},
    {"name": "single-turn user no-gen", "templateFile": Q, "add_generation_prompt": False,
     "messages": [{"role": "user", "content": "Tell me a joke about 🐍 and 中文."}]},
    {"name": "single-turn thinking off", "templateFile": Q, "add_generation_prompt": True, "enable_thinking": False,
     "messages": [{"role": "user", "content": "Quick answer please."}]},
    {"name": "single-turn thinking on", "templateFile": Q, "add_generation_prompt": True, "enable_thinking": True,
     "messages": [{"role": "user", "content": "Think hard."}]},
    {"name": "multi-turn reasoning history (think tags in content)", "templateFile": Q, "add_generation_prompt": True,
     "messages": [
        {"role": "system", "content": "Be concise."},
        {"role": "user", "content": "What is 17*3?"},
        {"role": "assistant", "content": "<think>\n17*3 = 51.\n</think>\n\n51"},
        {"role": "user", "content": "And 51/3?"},
        {"role": "assistant", "content": "<think>\nTrivially 17.\n</think>\n\n17"},
        {"role": "user", "content": "Thanks!"}]},
    {"name": "multi-turn reasoning_content field, thinking off", "templateFile": Q, "add_generation_prompt": True, "enable_thinking": False,
     "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello there.", "reasoning_content": "The user greets me."},
        {"role": "user", "content": "Bye"}]},
    {"name": "conversation ending with assistant (reasoning kept for last turn)", "templateFile": Q, "add_generation_prompt": False,
     "messages": [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "<think>\nr1\n</think>\n\nA1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "A2 without think", "reasoning_content": "r2\n"}]},
    {"name": "assistant after last query without reasoning", "templateFile": Q, "add_generation_prompt": False,
     "messages": [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "first part"},
        {"role": "assistant", "content": "second part"}]},
    {"name": "tools with call and response", "templateFile": Q, "add_generation_prompt": True, "tools": [weather_tool, time_tool],
     "messages": [
        {"role": "system", "content": "You can use tools."},
        {"role": "user", "content": "Weather in Paris and the time?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius", "days": 1}}},
            {"type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "content": "{\"temp\": 18.5, \"sky\": \"cloudy\"}"},
        {"role": "tool", "content": "12:00"},
        {"role": "assistant", "content": "<think>\nCombine results.\n</think>\n\nIt is 18.5 °C and cloudy; the time is 12:00."},
        {"role": "user", "content": "Thanks, and tomorrow?"}]},
    {"name": "tools without system, thinking off", "templateFile": Q, "add_generation_prompt": True, "enable_thinking": False, "tools": [weather_tool],
     "messages": [{"role": "user", "content": "北京天气怎么样？"}]},
    {"name": "multi-step tool loop (last query before tool turns)", "templateFile": Q, "add_generation_prompt": True, "tools": [weather_tool],
     "messages": [
        {"role": "user", "content": "Weather in Rome?"},
        {"role": "assistant", "content": "<think>\nNeed the tool.\n</think>\n\nLet me check.", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "Checking more.", "reasoning_content": "Also check days.", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Rome", "days": 3}}}]},
        {"role": "tool", "content": "sunny all week"}]},
    {"name": "user message that is a tool_response", "templateFile": Q, "add_generation_prompt": True,
     "messages": [
        {"role": "user", "content": "Real question"},
        {"role": "assistant", "content": "<think>\nx\n</think>\n\ncalling"},
        {"role": "user", "content": "<tool_response>\nresult\n</tool_response>"}]},
    {"name": "system later in conversation", "templateFile": Q, "add_generation_prompt": True,
     "messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "late system"}, {"role": "user", "content": "b"}]},
]

rich = [
    {"role": "system", "content": "  sys text  ", "extra": {"obj": {"k": [1, 2]}, "s": "str", "list": ["a", 1, None], "n": 42, "f": 2.5, "t": True, "no": False, "nil": None}},
    {"role": "user", "content": "first user"},
    {"role": "assistant", "content": None},
    {"role": "user", "content": "second user"},
]
tools = [{"name": "alpha", "description": "first", "parameters": {"type": "object"}}, {"name": "beta", "args": [1, 2.0, 2.25]}]
cases += [
    {"name": "2507 constructs, gen", "templateFile": "templates/constructs-2507.jinja", "add_generation_prompt": True, "messages": rich, "tools": tools},
    {"name": "2507 constructs, no gen", "templateFile": "templates/constructs-2507.jinja", "add_generation_prompt": False, "messages": rich[:2], "tools": tools},
    {"name": "raise_exception fires", "templateFile": "templates/raise.jinja", "messages": []},
    {"name": "raise_exception silent", "templateFile": "templates/raise.jinja", "messages": [{"role": "user", "content": "x"}]},
    {"name": "whitespace control inline", "template": "A  {{- ' b ' -}}  C\n  {%- if true -%}  D  {%- endif -%}\n{# c #}  E {#- c -#} F\n  {% if true %}\n    G\n  {% endif %}\nH {{ 'i' }}\n", "messages": []},
]
json.dump(cases, open('template-cases.json', 'w'), ensure_ascii=False, indent=1)
print(len(cases), 'cases')
