/** The fan-out chart: median time to the last delivery against N, one line per implementation, as SVG. */
import type { FanoutSample } from "./fanout";
import { median } from "./stats";

type Padding = { left: number; right: number; top: number; bottom: number };

/** The opening of every chart: the SVG element, a white ground, the title and the two axes. */
function chartFrame(width: number, height: number, pad: Padding, title: string): string[] {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="#ffffff"/>`,
    `<text x="${width / 2}" y="22" text-anchor="middle" font-size="14" font-weight="bold">${title}</text>`,
    `<line x1="${pad.left}" y1="${height - pad.bottom}" x2="${width - pad.right}" y2="${height - pad.bottom}" stroke="#111"/>`,
    `<line x1="${pad.left}" y1="${pad.top}" x2="${pad.left}" y2="${height - pad.bottom}" stroke="#111"/>`,
  ];
}

const COLORS: Record<string, string> = { ours: "#1b6ac9", seed: "#c2410c", floor: "#4b5563" };
const LABELS: Record<string, string> = { ours: "ours (sendmessage + fanout)", seed: "seed (Scan + Promise.all)", floor: "raw ws relay (floor)" };

export function fanoutChart(samples: FanoutSample[], title: string): string {
  const width = 640;
  const height = 380;
  const pad = { left: 64, right: 24, top: 40, bottom: 56 };
  const impls = [...new Set(samples.map((s) => s.implementation))];
  const sizes = [...new Set(samples.map((s) => s.members))].sort((a, b) => a - b);
  const series = impls.map((impl) => ({
    impl,
    points: sizes
      .map((n) => {
        const group = samples.filter((s) => s.implementation === impl && s.members === n);
        const reached = Math.min(...group.map((s) => s.delivered / s.recipients));
        return { n, ms: median(group.map((s) => s.timeMs)), reached };
      })
      .filter((p) => Number.isFinite(p.ms)),
  }));
  const maxMs = Math.max(1, ...series.flatMap((s) => s.points.map((p) => p.ms)));
  const maxN = Math.max(...sizes);
  const x = (n: number) => pad.left + (n / maxN) * (width - pad.left - pad.right);
  const y = (ms: number) => height - pad.bottom - (ms / maxMs) * (height - pad.top - pad.bottom);
  const ticks = Array.from({ length: 5 }, (_, i) => (maxMs * (i + 1)) / 5);
  const parts = [
    ...chartFrame(width, height, pad, title),
    ...ticks.map((t) => `<line x1="${pad.left}" y1="${y(t)}" x2="${width - pad.right}" y2="${y(t)}" stroke="#e5e7eb"/><text x="${pad.left - 6}" y="${y(t) + 4}" text-anchor="end">${(t / 1000).toFixed(1)} s</text>`),
    ...sizes.map((n) => `<text x="${x(n)}" y="${height - pad.bottom + 18}" text-anchor="middle">${n.toLocaleString("en-US")}</text>`),
    `<text x="${width / 2}" y="${height - 14}" text-anchor="middle">members of the room (N)</text>`,
    `<text x="16" y="${height / 2}" text-anchor="middle" transform="rotate(-90 16 ${height / 2})">send → last delivery (median)</text>`,
    ...series.map(
      (s) =>
        `<polyline fill="none" stroke="${COLORS[s.impl]}" stroke-width="2.5" points="${s.points.map((p) => `${x(p.n)},${y(p.ms)}`).join(" ")}"/>` +
        s.points.map((p) => `<circle cx="${x(p.n)}" cy="${y(p.ms)}" r="4" fill="${COLORS[s.impl]}"/>`).join("") +
        // A run that did not reach everyone says so beside its point.
        s.points
          .filter((p) => p.reached < 1)
          .map((p) => `<text x="${x(p.n) - 8}" y="${y(p.ms) + 18}" text-anchor="end" fill="${COLORS[s.impl]}">only ${Math.round(p.reached * 100)}% reached</text>`)
          .join(""),
    ),
    ...series.map((s, i) => `<rect x="${pad.left + 12}" y="${pad.top + 6 + i * 18}" width="12" height="12" fill="${COLORS[s.impl]}"/><text x="${pad.left + 30}" y="${pad.top + 16 + i * 18}">${LABELS[s.impl]}</text>`),
    `</svg>`,
  ];
  return parts.join("\n") + "\n";
}

const ROOM_COLORS: Record<string, string> = { "ours|10": "#1b6ac9", "ours|100": "#7c3aed", "floor|10": "#6b7280", "floor|100": "#111827" };

/** The room chart: p99 latency against the offered rate (both on log scales), one line per implementation and room size. */
export function roomChart(steps: { implementation: string; members: number; rate: number; p99Ms: number; delivered: number; expected: number }[], title: string, limitMs: number): string {
  const width = 640;
  const height = 400;
  const pad = { left: 72, right: 24, top: 40, bottom: 56 };
  const rates = [...new Set(steps.map((s) => s.rate))].sort((a, b) => a - b);
  const lines = [...new Set(steps.map((s) => `${s.implementation}|${s.members}`))];
  const msValues = steps.map((s) => Math.max(1, s.p99Ms)).filter(Number.isFinite);
  const lo = 1;
  const hi = Math.max(10 * limitMs, ...msValues);
  const x = (rate: number) => pad.left + (Math.log(rate / rates[0]) / Math.log(rates.at(-1)! / rates[0] || 2)) * (width - pad.left - pad.right);
  const y = (ms: number) => height - pad.bottom - (Math.log10(Math.max(lo, ms)) / Math.log10(hi)) * (height - pad.top - pad.bottom);
  const ticks = [1, 10, 100, 1_000, 10_000, 100_000].filter((t) => t <= hi);
  const label = (ms: number) => (ms >= 1000 ? `${ms / 1000} s` : `${ms} ms`);
  const parts = [
    ...chartFrame(width, height, pad, title),
    ...ticks.map((t) => `<line x1="${pad.left}" y1="${y(t)}" x2="${width - pad.right}" y2="${y(t)}" stroke="#e5e7eb"/><text x="${pad.left - 6}" y="${y(t) + 4}" text-anchor="end">${label(t)}</text>`),
    `<line x1="${pad.left}" y1="${y(limitMs)}" x2="${width - pad.right}" y2="${y(limitMs)}" stroke="#dc2626" stroke-dasharray="6 4"/><text x="${width - pad.right}" y="${y(limitMs) - 6}" text-anchor="end" fill="#dc2626">p99 target ${label(limitMs)}</text>`,
    ...rates.map((r) => `<text x="${x(r)}" y="${height - pad.bottom + 18}" text-anchor="middle">${r}</text>`),
    `<text x="${width / 2}" y="${height - 14}" text-anchor="middle">offered rate, messages per second in one room</text>`,
    `<text x="16" y="${height / 2}" text-anchor="middle" transform="rotate(-90 16 ${height / 2})">p99 send → delivery</text>`,
    ...lines.map((key) => {
      const points = steps.filter((s) => `${s.implementation}|${s.members}` === key && Number.isFinite(s.p99Ms)).sort((a, b) => a.rate - b.rate);
      const color = ROOM_COLORS[key] ?? "#0f766e";
      return (
        `<polyline fill="none" stroke="${color}" stroke-width="2.5" points="${points.map((p) => `${x(p.rate)},${y(p.p99Ms)}`).join(" ")}"/>` +
        points.map((p) => `<circle cx="${x(p.rate)}" cy="${y(p.p99Ms)}" r="4" fill="${p.delivered === p.expected ? color : "#ffffff"}" stroke="${color}" stroke-width="2"/>`).join("")
      );
    }),
    ...lines.map((key, i) => {
      const [impl, members] = key.split("|");
      const name = impl === "ours" ? `ours, room of ${members}` : `raw ws relay, room of ${members}`;
      return `<rect x="${pad.left + 12}" y="${pad.top + 6 + i * 18}" width="12" height="12" fill="${ROOM_COLORS[key] ?? "#0f766e"}"/><text x="${pad.left + 30}" y="${pad.top + 16 + i * 18}">${name}</text>`;
    }),
    `<text x="${width - pad.right}" y="${pad.top + 12}" text-anchor="end" fill="#6b7280">hollow point: not every message delivered</text>`,
    `</svg>`,
  ];
  return parts.join("\n") + "\n";
}
