import json, csv, sys
from pathlib import Path
B, A = Path('/tmp/cmp/before'), Path('/tmp/cmp/after')
def j(p): return json.loads(p.read_text())
for name in ('train.json', 'eval.json'):
    b, a = j(B/name), j(A/name)
    keys = [k for k in ('top1','top5','loss','images','epochs','best_epoch','fold') if k in b]
    print(name, {k: (b[k], a.get(k)) for k in keys})
    if name=='train.json':
        bt, at = b.get('test') or b.get('metrics',{}), a.get('test') or a.get('metrics',{})
        print('  train test:', bt, '|', at)
bp, ap = (B/'pred/test.csv').read_text(), (A/'pred/test.csv').read_text()
print('predict CSV identical:', bp == ap, len(bp.splitlines()))
def rows(p):
    return {(r['Model'], r['Fold'], r['Batch Size'], r['Backend'], r['Precision']): r for r in csv.DictReader(open(p))}
rb, ra = rows(B/'bench.csv'), rows(A/'bench.csv')
print('bench configs before/after:', len(rb), len(ra), 'same set:', set(rb) == set(ra))
for k in sorted(rb):
    if k in ra: print('  ', k, rb[k].get('Throughput (img/s)') or rb[k].get('Throughput'), ra[k].get('Throughput (img/s)') or ra[k].get('Throughput'))
tb, ta = j(B/'tune.json'), j(A/'tune.json')
print('tune accuracy before:', json.dumps(tb.get('accuracy'))[:600])
print('tune accuracy after :', json.dumps(ta.get('accuracy'))[:600])
print('tune recommended:', {k: tb['recommended'].get(k) for k in ('backend','precision','fold','batch_size')}, {k: ta['recommended'].get(k) for k in ('backend','precision','fold','batch_size')})
print('bench notices', j(B/'bench.json')['notices'], j(A/'bench.json')['notices'])
