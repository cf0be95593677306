#!/bin/bash
# A/B of runner 7, alternating: checkouts of the commit before (/work/ab-before) and after
# (/work/ab-after) a change. Run for issue 13's refactor (dd76f3c, fc31192) and for the
# cluster AutoThrottle hand-off (e1268a5, a1c9156; results in ../handoff-ab/).
PY=/work/main/.venv/bin/python
LAT=$1; PORT=$2; N=$3; OUT=$4
cd /work/main && $PY -m benchmarks.server --port $PORT --latency $LAT --max-seconds 900 > /tmp/abserver.log 2>&1 &
SP=$!
sleep 3
for i in 1 2 3 4; do
  for side in before after; do
    cd /work/ab-$side && r=$($PY -m benchmarks.runners.scrapy_crawl --variant addon --base-url http://127.0.0.1:$PORT --pages $N --concurrency 100 2>/dev/null | tail -1)
    echo "$side $r" >> $OUT
  done
done
kill $SP
