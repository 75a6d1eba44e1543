"""The label sets of the paper: class names in class-index order (PAPER.md,
"Late fusion")."""

# The four emotions of IIT-R SIER (§3.1); their order is the class index.
EMOTIONS = ('anger', 'happy', 'hate', 'sad')
# The three sentiments of the B-T4SA comparison (Table 3).
SENTIMENTS = ('negative', 'neutral', 'positive')
