"""Subtitle lines of the demo clips: Chinese TV-dialogue phrases of each emotion, misleading and everyday lines.

Usage:
    from demo.text import transcript_line
    line, kind = transcript_line("happy", np.random.default_rng(0))   # kind: keyword, misleading or neutral
"""

from __future__ import annotations

import numpy as np

# the transcript of an empty_transcript clip's "garbage" variant: an ASR language tag and nothing else
GARBAGE_TRANSCRIPT = "<|zh-CN|>"

# Lines of each emotion in TV-dialogue style, with explicit emotion words that sentence embeddings pick up.
_EMOTION_PHRASES: dict[str, tuple[str, ...]] = {
    "angry": (
        "你给我滚出去，混蛋",
        "我受够了你的谎话，气死我了",
        "你凭什么这么对我，太过分了",
        "简直气死我了",
        "别再找借口了，我很生气",
        "你到底有完没完，烦死了",
        "这件事我绝对不会原谅你",
        "你再说一遍试试，我饶不了你",
        "少在这里跟我装蒜，混账东西",
        "我恨你，你把我当什么人了",
    ),
    "happy": (
        "太好了我们成功了，真开心",
        "我真是太开心了",
        "今天是我最幸福的一天",
        "哈哈哈你真逗，笑死我了",
        "恭喜你考上了大学，太棒了",
        "我终于等到这一天了，好高兴",
        "谢谢你的礼物我好喜欢",
        "我们一起去庆祝吧",
        "这真是个天大的好消息",
        "看到你我就高兴",
    ),
    "sad": (
        "他再也回不来了，我好伤心",
        "我心里好难受",
        "为什么偏偏是我，太痛苦了",
        "对不起，是我害了你",
        "我们还是分手吧，我好难过",
        "妈妈走了以后家里空荡荡的",
        "我真的好想哭",
        "一切都结束了，我好绝望",
        "没有人在乎我，好孤单",
        "我好想你，可你不在了",
    ),
    "worried": (
        "他怎么还不回来，我好担心",
        "万一出了什么事可怎么办",
        "我总觉得心里不踏实",
        "医生说结果还要再等等，我好紧张",
        "孩子发烧一直不退，急死我了",
        "这下可怎么办才好",
        "我担心他会出事",
        "明天的考试我一点把握都没有，好焦虑",
        "钱要是还不上就完了，我好害怕",
        "你千万要小心啊，我不放心",
    ),
    "surprise": (
        "什么？这怎么可能",
        "天哪，你怎么来了",
        "真的假的？太意外了",
        "我简直不敢相信自己的眼睛",
        "啊？原来是你",
        "居然是这样，太吃惊了",
        "咦？你们怎么都在这儿",
        "他竟然还活着？",
        "哇，这也太突然了吧",
        "没想到你会这么说，真让我吃惊",
    ),
}
# Everyday lines with no emotion: every clip may get one, and neutral clips' own phrase comes from here.
_NEUTRAL_PHRASES: tuple[str, ...] = (
    "我先去趟超市",
    "明天早上八点开会",
    "把那份文件递给我",
    "你吃饭了吗",
    "这件衣服多少钱",
    "我下班顺路去接孩子",
    "车停在楼下了",
    "周末记得去交水电费",
    "电话号码你记一下",
    "会议室在三楼",
    "我等会儿再给你回电话",
    "请坐，喝点水",
    "今天的报纸放在桌上了",
    "他说晚点到",
    "这个月的报表做完了吗",
    "先把门关上",
    "菜我已经买好了",
    "下午三点的火车",
    "你把钥匙放哪儿了",
    "这件事明天再说",
)
_OPENERS: tuple[str, ...] = (
    "",
    "",
    "",
    "哎，",
    "你听我说，",
    "说实话，",
    "妈，",
    "老王，",
    "小李，",
    "喂，",
    "我跟你讲，",
)
_CLOSERS: tuple[str, ...] = ("。", "。", "！", "啊。", "吧。", "呢。", "…", "，知道吗？")
# share of clips whose line carries their own emotion, and of clips with another emotion's line
_KEYWORD_SHARE = 0.4
_MISLEADING_SHARE = 0.1


def transcript_line(label: str, rng: np.random.Generator) -> tuple[str, str]:
    """A subtitle line for a clip of `label`; returns (line, text kind)."""
    draw = rng.random()
    if draw < _KEYWORD_SHARE:
        kind = "keyword"
        pool = _NEUTRAL_PHRASES if label == "neutral" else _EMOTION_PHRASES[label]
    elif draw < _KEYWORD_SHARE + _MISLEADING_SHARE:
        kind = "misleading"
        others = [other for other in _EMOTION_PHRASES if other != label]
        pool = _EMOTION_PHRASES[others[rng.integers(len(others))]]
    else:
        kind = "neutral"
        pool = _NEUTRAL_PHRASES
    phrase = pool[rng.integers(len(pool))]
    line = (
        _OPENERS[rng.integers(len(_OPENERS))]
        + phrase.rstrip("？！。")
        + _CLOSERS[rng.integers(len(_CLOSERS))]
    )
    return line, kind
