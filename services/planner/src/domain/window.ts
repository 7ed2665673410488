// Maintenance windows: a daily UTC interval "HH:MM-HH:MM" (wrapping midnight when the
// end is earlier than the start). Outside it no node is granted a reboot.
import { invalidArgument } from "@ferry/runtime";

export interface DailyWindow {
  startMin: number;
  endMin: number;
}

export function parseWindow(daily: string): DailyWindow | undefined {
  if (daily.trim() === "") return undefined;
  const m = /^(\d{2}):(\d{2})-(\d{2}):(\d{2})$/.exec(daily.trim());
  const bad = () => invalidArgument(`maintenance window "${daily}": expected "HH:MM-HH:MM" in UTC, e.g. "01:00-05:00"`, "BAD_WINDOW");
  if (!m) throw bad();
  const [h1, m1, h2, m2] = m.slice(1).map(Number) as [number, number, number, number];
  if (h1 > 23 || h2 > 24 || m1 > 59 || m2 > 59 || (h2 === 24 && m2 !== 0)) throw bad();
  const startMin = h1 * 60 + m1;
  const endMin = h2 * 60 + m2;
  if (startMin === endMin) throw invalidArgument(`maintenance window "${daily}" is empty`, "BAD_WINDOW");
  return { startMin, endMin };
}

export function inWindow(w: DailyWindow | undefined, now: Date): boolean {
  if (!w) return true;
  const t = now.getUTCHours() * 60 + now.getUTCMinutes();
  return w.startMin < w.endMin ? t >= w.startMin && t < w.endMin : t >= w.startMin || t < w.endMin;
}
