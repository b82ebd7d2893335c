"""Special token ids, with XLM's dictionary layout (src/data/dictionary.py of XLM and RE-LM): 14 special words at ids
0-13, then the vocabulary file's words in file order. BOS and EOS share id 1 in every sequence (XLM starts sentences
with </s>); <s> (id 0) is never used. The one home of these numbers: everything else imports them from here."""

BOS_WORD, EOS_WORD, PAD_WORD, UNK_WORD = "<s>", "</s>", "<pad>", "<unk>"
SPECIAL_WORDS = [BOS_WORD, EOS_WORD, PAD_WORD, UNK_WORD] + [f"<special{i}>" for i in range(10)]
N_SPECIAL = len(SPECIAL_WORDS)  # 14: the first vocabulary word has this id

EOS = 1
BOS = EOS  # sentences start with </s> as in XLM
PAD = 2
UNK = 3
SEP = 4  # <special0>
MASK = 5  # <special1>: masked-LM targets and word_blank
